"""How far a short training run in bfloat16 ends from the same run in float32.

  python bench/precision_gap.py --config=configs/quickstart.py --steps=20

Trains the config for --steps steps with config.model.dtype float32 and bfloat16 (the training
loop, each in a temporary workdir, evaluators off, the warm-up cut to fit the steps, the runs' own
logs not shown), and prints the loss of
both at the first and last step, the largest gap between them over the steps, and how far apart
the final parameters are relative to how far training moved the float32 ones (the norm of their
difference over that of the float32 run's change). tests/test_precision.py bounds the same two
figures for the tiny config.
"""

import contextlib
import io
import os
import sys
import tempfile

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jclip.cli import quiet_library_logs
from jclip.config.defaults import complete
from jclip.runs.metrics import read_metrics
from jclip.training import loop
from jclip.training.state import init_state

# Configs build on each other (`from configs import flickr8k`): the repository root must be
# importable, as it is for train.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to train.")
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps in each dtype.")
flags.mark_flags_as_required(["config"])


def _flat(params) -> np.ndarray:
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(params)])


def _short_run(config, dtype: str) -> tuple[np.ndarray, np.ndarray]:
  """(the loss at every step, the final parameters, flattened) of the config in `dtype`."""
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config.num_steps, config.log_every, config.checkpoint_every = _STEPS.value, 1, _STEPS.value
  config.optim.warmup_steps = min(config.optim.warmup_steps, _STEPS.value - 1)
  config.evals, config.best_metric = ml_collections.ConfigDict(), None
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    state = loop.train(config, workdir)
    losses = np.array([record["loss"] for record in read_metrics(workdir)])
  return losses, _flat(jax.device_get(state.params))


def main(argv):
  del argv
  quiet_library_logs()
  config = complete(_CONFIG.value)
  losses_32, params_32 = _short_run(config, "float32")
  losses_16, params_16 = _short_run(config, "bfloat16")
  _, initial = init_state(config)
  moved = np.linalg.norm(params_32 - _flat(jax.device_get(initial.params)))
  print(
    f"bfloat16 vs float32 over {_STEPS.value} steps: loss {losses_32[0]:.4f} -> "
    f"{losses_32[-1]:.4f} (float32), {losses_16[0]:.4f} -> {losses_16[-1]:.4f} (bfloat16); "
    f"largest loss gap {np.max(np.abs(losses_16 - losses_32)):.4f}; parameters apart "
    f"{np.linalg.norm(params_16 - params_32) / moved:.3f} of the distance they moved"
  )


if __name__ == "__main__":
  app.run(main)
