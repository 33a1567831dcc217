"""train.py --multihost for real: two processes on 127.0.0.1, 2 fake CPU devices each (CPU
collectives), train the tiny config together, as BUILD.md's "Several hosts" recipe runs them, and
end where one process with 4 devices does, with and without gradient accumulation; then both
resume the checkpoint they wrote, and a SIGTERM to one of them stops both after the same step.

Text dropout is off: the two processes read interleaved shares of the data stream, so an example
sits on another device than in the one-process run, and would draw another dropout mask there.
"""

import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, SIGNALLED_TRAIN, script_env, tiny_clip_config
from jclip.runs.checkpoint import Checkpoints
from jclip.runs.metrics import read_metrics
from jclip.training.inputs import DEVICE_PREFETCH
from jclip.training.state import restore_state

TIMEOUT_S = 600  # for each group of processes; any still running then is killed
CONFIG = ["--config=configs/tiny.py", "--config.model.text.dropout_rate=0.0"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_together(commands, tmp_path, devices):
  """Runs python once per argument list (train.py's, or SIGNALLED_TRAIN's), all at once, each with
  `devices` fake CPU devices; returns each one's (exit status, output). Every process is ended by
  the deadline."""
  env = script_env(devices)
  logs = [open(tmp_path / f"log_{time.monotonic_ns()}_{i}.txt", "w+") for i in range(len(commands))]
  processes = [
    subprocess.Popen(
      [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    for args, log in zip(commands, logs, strict=True)
  ]
  deadline = time.monotonic() + TIMEOUT_S
  try:
    for process in processes:
      process.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  results = []
  for process, log in zip(processes, logs, strict=True):
    log.seek(0)
    # A crash ends with Python's list of loaded extension modules: drop it, keep what led there.
    output = re.sub(r"\nExtension modules:[^\n]*", "", log.read())
    results.append((process.returncode, output))
    log.close()
  return results


def _two_processes(workdir, tmp_path, *extra, first_signalled_at=None):
  """train.py --multihost in two processes; with `first_signalled_at` ("TERM:<batch index>"),
  process 0 sends itself that signal (SIGNALLED_TRAIN) and process 1 gets none."""
  address = f"127.0.0.1:{_free_port()}"
  scripts = [
    ["-c", SIGNALLED_TRAIN, first_signalled_at] if first_signalled_at else ["train.py"],
    ["train.py"],
  ]
  return _run_together(
    [
      [
        *script,
        "--multihost",
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
        *CONFIG,
        *extra,
        f"--workdir={workdir}",
      ]
      for i, script in enumerate(scripts)
    ],
    tmp_path,
    devices=2,
  )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The reference: the tiny config trained in one process with 4 devices, 6 steps of 16 pairs."""
  tmp_path = tmp_path_factory.mktemp("one_process")
  workdir = str(tmp_path / "run")
  [(status, output)] = _run_together(
    [["train.py", *CONFIG, f"--workdir={workdir}"]], tmp_path, devices=4
  )
  assert status == 0, output[-3000:]
  return workdir


def _train_in_two_processes_and_compare(tmp_path, reference, *extra):
  """Trains the tiny config (with `extra` flags) in two processes of 2 devices; checks that it ends
  with the parameters of the one-process `reference` after 6 steps, and that one log has steps
  [2, 4, 6]. Returns the two-process workdir."""
  multi = str(tmp_path / "two_processes")
  for status, output in _two_processes(multi, tmp_path, *extra):
    assert status == 0, output[-3000:]

  config = tiny_clip_config()
  config.model.text.dropout_rate = 0.0
  states = [
    restore_state(Checkpoints(workdir, create=False), config) for workdir in (multi, reference)
  ]
  assert int(states[0].step) == int(states[1].step) == 6
  leaves = [jax.tree.leaves(state.params) for state in states]
  assert len(leaves[0]) == len(leaves[1]) > 40
  for a, b in zip(*leaves, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # 2 x 2 vs 4 devices: other sum orders
  assert [r["step"] for r in read_metrics(multi)] == [2, 4, 6]  # one log, from process 0
  return multi


def test_two_processes_train_like_one_with_all_devices_resume_together_and_stop_together(
  tmp_path, one_process
):
  multi = _train_in_two_processes_and_compare(tmp_path, one_process)

  # Both resume from the checkpoint they wrote, and SIGTERM to process 0 alone (during its second
  # step, when it asks for the batch DEVICE_PREFETCH steps ahead) stops both after the same step,
  # once that step's checkpoint is saved.
  results = _two_processes(
    multi, tmp_path, "--config.num_steps=20", first_signalled_at=f"TERM:{1 + DEVICE_PREFETCH}"
  )
  assert f"Resuming {multi} from step 6." in results[0][1]
  last_lines = [output.strip().splitlines()[-1] for _, output in results]
  assert [status for status, _ in results] == [143, 143], last_lines
  stopped_after = Checkpoints(multi, create=False).latest_step()
  assert 6 < stopped_after < 20
  assert (
    last_lines
    == [
      f"stopped: Stopped by SIGTERM after step {stopped_after}, whose checkpoint is saved in "
      f"{multi}/checkpoints. To resume, run the same command again (--workdir={multi})."
    ]
    * 2
  )
  steps = [r["step"] for r in read_metrics(multi)]
  assert steps == sorted(set(steps)) and steps[:3] == [2, 4, 6] and steps[-1] <= stopped_after


def test_two_processes_accumulate_like_one_with_all_devices(tmp_path, one_process):
  """accum_steps runs several programs per step, each collective across both processes: 2 chunks
  of 8 pairs end where one process's steps of 16 pairs do (the cached gradient is exact). (No
  evaluator runs: the test above evaluates on two processes, and compiling the evaluators in two
  more would test nothing new.)"""
  _train_in_two_processes_and_compare(
    tmp_path,
    one_process,
    "--config.accum_steps=2",
    "--config.batch_size=8",
    "--config.evals.val.every=0",
    "--config.evals.zeroshot.every=0",
    "--config.best_metric=",
  )
