"""Metric logging: one JSON object per line in <workdir>/metrics.jsonl, and a line on the console."""

from __future__ import annotations

import json
import os

from tqdm import tqdm


class MetricWriter:
  """Appends {"step": s, name: value, ...} records; only process 0 writes (every host has the same
  global metrics)."""

  def __init__(self, workdir: str, enabled: bool = True, filename: str = "metrics.jsonl"):
    self.path = os.path.join(workdir, filename)
    self.enabled = enabled

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    tqdm.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                            if k != "step"))


def read_metrics(workdir: str, filename: str = "metrics.jsonl") -> list[dict]:
  """All records of a workdir's metrics log, in order."""
  with open(os.path.join(workdir, filename)) as f:
    return [json.loads(line) for line in f if line.strip()]
