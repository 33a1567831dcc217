"""Metric logging: a JSON line per record in <workdir>/metrics.jsonl, TensorBoard event files under
<workdir>/tensorboard/, and a line on the console.

A record is {"step": s, name: value, ...}: the training metrics of a log step ("loss",
"temperature", ...) and the figures of the evaluators that ran at that step, prefixed with the
evaluator's name ("val/i2t_r10", "val/rsum"). TensorBoard gets every value as a scalar under the
same name (so "val/..." figures share one section), written with tensorboardX: no TensorFlow.
"""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def say(message: str) -> None:
  """A progress message for the person running the job, from the first host only; above any
  progress bar, not inside it."""
  if jax.process_index() == 0:
    tqdm.write(message)


class MetricWriter:
  """Appends records; only process 0 writes (every host has the same global metrics).

  A run that resumes from step s replays the steps after s, so the records of those steps that a
  killed run had already logged are dropped first: metrics.jsonl keeps its records up to step s,
  and TensorBoard hides the events after s (tensorboardX's purge_step). No step is logged twice.
  """

  def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    self._tensorboard = None
    if enabled:
      self._drop_records_after(start_step)
      self._tensorboard = SummaryWriter(
        os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1
      )

  def _drop_records_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
      with open(self.path + ".tmp", "w") as f:  # replaced whole: a crash here loses nothing
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name != "step":
        self._tensorboard.add_scalar(name, value, global_step=record["step"])
    self._tensorboard.flush()  # a run killed later still has everything up to here
    say(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of a workdir's metrics log, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
