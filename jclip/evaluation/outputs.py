"""The one writer of a run's evaluation files (<workdir>/eval/ for eval.py): JSON figures and the
PNGs drawn from them, each path recorded, and one line at the end that lists what was saved."""

from __future__ import annotations

import json
import os
import textwrap


class EvalOutputs:
  """Writes into `out_dir` (created if missing) and remembers every file written."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.written: list[str] = []
    os.makedirs(out_dir, exist_ok=True)

  def json(self, name: str, data: dict) -> str:
    path = self.path(name)
    with open(path, "w") as f:
      json.dump(data, f, indent=2)
    return path

  def path(self, name: str) -> str:
    """The path of a new file `name` (a PNG that the caller draws), recorded as written."""
    path = os.path.join(self.out_dir, name)
    self.written.append(path)
    return path

  def summary(self) -> str:
    """'Saved in <out_dir>: a.json, a.png, ...', wrapped at 100 columns."""
    return textwrap.fill(
      f"Saved in {self.out_dir}: " + ", ".join(map(os.path.basename, self.written)),
      width=100,
      subsequent_indent="  ",
      break_long_words=False,
      break_on_hyphens=False,
    )
