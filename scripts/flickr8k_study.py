"""Reruns the Flickr8k study (docs/flickr8k_study.md): named variants of configs/flickr8k.py, each
trained from scratch, one after another, with one markdown row per run appended to a log.

  python scripts/flickr8k_study.py --data_root=/path/to/flickr8k --variants=old,recipe \
      --num_steps=400 --out_dir=/tmp/f8k_study --log=/tmp/f8k_study/rows.md

A row holds the exact command, the steps, the wall time, the pairs/s that bench/train_step.py
measures for the same config on this machine just before the run (machines differ 2x from day to
day, so a time means little without it), and the final val R@1/5/10 both ways. Run nothing else on
the machine meanwhile: the times are only comparable on an otherwise idle CPU.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/flickr8k.py"

# The old from-scratch recipe (configs/flickr8k.py before the study, flickr8k.base_config() now):
# 64 px in 8 px patches, one caption per image, a 2-layer text transformer with an MLP of 1024.
OLD = [
  "--config.data.image_size=64",
  "--config.model.image.stem_stride=8",
  "--config.data.captions_per_image=1",
  "--config.model.text.num_layers=2",
  "--config.model.text.mlp_dim=1024",
]

# Each variant: (what changes, overrides of configs/flickr8k.py). "recipe" is the config itself.
VARIANTS = {
  "old": ("the old recipe", OLD),
  "old_captions2": (
    "the old recipe, two captions of each image per step",
    [*OLD, "--config.data.captions_per_image=2"],
  ),
  "old_captions5": (
    "the old recipe, all five captions of each image per step",
    [*OLD, "--config.data.captions_per_image=5"],
  ),
  "recipe": (
    "configs/flickr8k.py: 96 px in 12 px patches, two captions per image, a 1-layer "
    "text transformer with an MLP of 512",
    [],
  ),
  "recipe_lr3e-3": ("the recipe at peak learning rate 3e-3", ["--config.optim.learning_rate=3e-3"]),
  "recipe_captions1": (
    "the recipe with one caption per image",
    ["--config.data.captions_per_image=1"],
  ),
  "recipe_captions5": (
    "the recipe with all five captions per image",
    ["--config.data.captions_per_image=5"],
  ),
}

_DATA_ROOT = flags.DEFINE_string("data_root", None, "The Flickr8k folder (images/, captions.tsv).")
_VARIANTS = flags.DEFINE_list(
  "variants", ["recipe"], f"Variants to run, in order: {list(VARIANTS)}."
)
_NUM_STEPS = flags.DEFINE_integer(
  "num_steps",
  400,
  "Training steps of each run (a proxy is shorter than the full config; the schedule follows it).",
)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds to run each variant with.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/f8k_study", "Workdirs and logs go here.")
_LOG = flags.DEFINE_string(
  "log", None, "Markdown file to append the rows to (default: <out_dir>/rows.md)."
)
_EXTRA = flags.DEFINE_list(
  "extra", [], "Overrides added to every run, e.g. --extra=--config.batch_size=256."
)
flags.mark_flags_as_required(["data_root"])


def _bench_pairs_per_sec(overrides: list[str]) -> float:
  """bench/train_step.py's pairs/s for the config with `overrides`, measured now."""
  out = subprocess.run(
    [sys.executable, "bench/train_step.py", f"--config={CONFIG}", *overrides],
    cwd=ROOT,
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  return float(re.search(r"-> ([\d.]+) pairs/s", out).group(1))


def _final_val(workdir: str) -> dict:
  """The last record of metrics.jsonl that holds val figures."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if "val/rsum" in r][-1]


def _row(
  name: str, command: str, steps: int, wall_s: float, pairs_per_sec: float, val: dict, what: str
) -> str:
  figures = " / ".join(f"{val[f'val/{d}_r{k}']:.3f}" for d in ("i2t", "t2i") for k in (1, 5, 10))
  return (
    f"| {name} | `{command}` | {steps} | {wall_s / 60:.1f} min | {pairs_per_sec:.1f} | "
    f"{figures} | {val['val/rsum']:.3f} | {what} |"
  )


def main(argv):
  del argv
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"Unknown variant(s) {unknown}: choose from {list(VARIANTS)}.")
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  log = _LOG.value or os.path.join(_OUT_DIR.value, "rows.md")
  for name in _VARIANTS.value:
    what, overrides = VARIANTS[name]
    overrides = [*overrides, *_EXTRA.value, f"--config.num_steps={_NUM_STEPS.value}"]
    pairs_per_sec = _bench_pairs_per_sec(overrides)
    print(
      f"[{time.strftime('%H:%M:%S')}] {name}: bench/train_step.py {pairs_per_sec:.1f} pairs/s",
      flush=True,
    )
    for seed in _SEEDS.value:
      workdir = os.path.join(_OUT_DIR.value, f"{name}_s{seed}")
      args = [
        sys.executable,
        "train.py",
        f"--config={CONFIG}",
        f"--config.data.root={_DATA_ROOT.value}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *overrides,
      ]
      command = shlex.join(["python", *args[1:]])
      print(f"[{time.strftime('%H:%M:%S')}] {name}, seed {seed}: {command}", flush=True)
      start = time.perf_counter()
      with open(f"{workdir}.log", "w") as out:
        subprocess.run(args, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
      row = _row(
        f"{name} (seed {seed})",
        command,
        _NUM_STEPS.value,
        time.perf_counter() - start,
        pairs_per_sec,
        _final_val(workdir),
        what,
      )
      with open(log, "a") as f:
        f.write(row + "\n")
      print(row, flush=True)


if __name__ == "__main__":
  app.run(main)
