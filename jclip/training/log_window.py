"""What the loop logs every config.log_every steps: the metrics of the window's last step, its
pairs/s (training time only: evaluation is left out), the time the steps waited for their batches,
and a named error when the loss is no longer finite."""

from __future__ import annotations

import time

import ml_collections

from jclip.config.derived import step_batch_size
from jclip.runs.checkpoint import Checkpoints
from jclip.training.step import unreplicate


class NonFiniteLossError(FloatingPointError):
  pass


class LogWindow:
  """The steps since the last log line. `batches` counts the seconds spent waiting for data
  (inputs.OnDevices.wait_seconds)."""

  def __init__(self, batches, config: ml_collections.ConfigDict):
    self._batches, self._config = batches, config
    self._reset()

  def _reset(self) -> None:
    self._start, self._steps = time.perf_counter(), 0
    self._wait_at_start = self._batches.wait_seconds

  def step_done(self) -> None:
    self._steps += 1

  def leave_out(self, seconds: float) -> None:
    """Time spent in the window on something else than training (evaluation)."""
    self._start += seconds

  def record(self, metrics) -> dict:
    """The training metrics of a log step, with pairs/s, the mean time a step waited for its batch
    and the temperature; starts the next window."""
    record = unreplicate(metrics)  # waits for the window's last step, whose time counts in it
    seconds = time.perf_counter() - self._start
    record["pairs_per_sec"] = self._steps * step_batch_size(self._config) / seconds
    waited = self._batches.wait_seconds - self._wait_at_start
    record["data_wait_ms"] = 1e3 * waited / self._steps
    if "logit_scale" in record:
      record["temperature"] = 1.0 / record["logit_scale"]
    self._reset()
    return record


def non_finite_error(
  record: dict, step: int, checkpoints: Checkpoints, config
) -> NonFiniteLossError:
  return NonFiniteLossError(
    f"The loss is {record['loss']} at step {step} ({int(record['skipped_updates'])} updates "
    f"skipped so far): lower optim.learning_rate (now {config.optim.learning_rate}) or check "
    f"the data. The last good checkpoint is step {checkpoints.latest_step()} in "
    f"{checkpoints.directory}."
  )
