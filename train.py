"""Train a jclip model.

  python train.py --config=configs/quickstart.py --workdir=/tmp/jclip_quickstart
  python train.py --config=configs/quickstart.py --config.batch_size=256 --workdir=/tmp/run
  python train.py --config=configs/quickstart.py --config.accum_steps=4 --workdir=/tmp/run

`batch_size` is global (split over every device) and is what the model runs on at once: it sets the
memory. `accum_steps=k` makes every optimiser step train on k * batch_size pairs, run in k chunks of
batch_size: the gradient is exactly that of one step over all k * batch_size (for CLIP, every pair
has the negatives of the whole step), at the memory of batch_size, for one more forward pass of each
chunk. The step count, the learning-rate schedule and checkpoints count optimiser steps.

Every field of the config can be overridden with --config.<field>=<value>; `--config=...` alone
prints nothing extra, and `python train.py --config=configs/quickstart.py --show_config` prints the
resolved config and exits. Re-running the same command on the same workdir resumes from the latest
readable checkpoint; a changed config is refused unless --allow_config_change is given (the model
can never change). SIGTERM (a cluster's preemption notice) or Ctrl-C stops the run after the current
step, once that step's checkpoint is saved; it exits with status 143 (130 for Ctrl-C) and the rerun
resumes there. On several hosts, run the same command on every host with --multihost, and
--coordinator_address, --num_processes and --process_id where the cluster does not provide them
(see BUILD.md, "Several hosts"). XLA's compiled programs are kept on disk (--compilation_cache,
on by default), so that a resume or a second run of a config starts its first step sooner.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jclip.cli import (
  define_compilation_cache_flag,
  parse_flags,
  run_reporting_user_errors,
  use_compilation_cache,
)
from jclip.errors import UserError
from jclip.training.loop import train
from jclip.training.preemption import Interrupted

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file in configs/, e.g. configs/quickstart.py. Any field "
  "can then be overridden as --config.<field>=<value>.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints, metrics.jsonl and eval outputs. Re-using a workdir resumes its run.",
)
_SHOW_CONFIG = flags.DEFINE_bool("show_config", False, "Print the resolved config and exit.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume a workdir whose checkpoint was trained with other "
  "settings (seed, batch size, data, optimiser...): without it such a resume is refused "
  "with the list of changed fields. num_steps, logging, checkpointing and evaluation settings "
  "may always change; the model never.",
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost",
  False,
  "Call jax.distributed.initialize() first and train on the devices of "
  "every process (one per host; run the same command on each). Its coordinator address, "
  "process count and id come from the three flags below, or else from the cluster: TPU pods, "
  "SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS (jax reads no other variable).",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address",
  None,
  "With --multihost: host:port where process 0 serves the "
  "coordinator, the same on every process (e.g. 10.0.0.1:8476).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "With --multihost: how many processes train together.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id",
  None,
  "With --multihost: this process's index, 0 to --num_processes - 1 (0 "
  "serves the coordinator and writes the logs).",
  lower_bound=0,
)
_COMPILATION_CACHE = define_compilation_cache_flag()
_PROCESS_FLAGS = (_COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID)
flags.mark_flags_as_required(["config"])


def _initialize_distributed() -> None:
  """jax.distributed.initialize with the process flags given; the cluster detects the rest."""
  if (
    _PROCESS_ID.value is not None
    and _NUM_PROCESSES.value is not None
    and (_PROCESS_ID.value >= _NUM_PROCESSES.value)
  ):
    raise UserError(
      f"--process_id={_PROCESS_ID.value} must be below --num_processes={_NUM_PROCESSES.value}."
    )
  jax.distributed.initialize(
    coordinator_address=_COORDINATOR_ADDRESS.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )


def _main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  if _SHOW_CONFIG.value:
    print(_CONFIG.value)
    return
  if _WORKDIR.value is None:
    raise UserError("--workdir is required: the directory for checkpoints and metrics.")
  use_compilation_cache(_COMPILATION_CACHE.value)
  if _MULTIHOST.value:
    _initialize_distributed()
  elif any(flag.present for flag in _PROCESS_FLAGS):
    raise UserError(
      f"{', '.join('--' + f.name for f in _PROCESS_FLAGS if f.present)} "
      "given without --multihost: add --multihost, or leave them out."
    )
  logging.info(
    "JAX %s: %d process(es), %d local device(s) of %d: %s",
    jax.__version__,
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  try:
    train(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except Interrupted as stopped:  # SIGTERM or Ctrl-C: the step's checkpoint is saved
    print(f"stopped: {stopped}", file=sys.stderr)
    sys.exit(stopped.exit_code)


def main(argv):
  run_reporting_user_errors(_main, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
