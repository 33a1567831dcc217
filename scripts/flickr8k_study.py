"""Reruns the Flickr8k study (docs/flickr8k_study.md): named variants of configs/flickr8k.py, each
trained from scratch, one after another, with one markdown row per run appended to a log.

  python scripts/flickr8k_study.py --data_root=/path/to/flickr8k --variants=base,one_caption \
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

# Each variant: (what changes, overrides of configs/flickr8k.py). "base" is the config itself.
VARIANTS = {
    "base": ("configs/flickr8k.py as it is", []),
    "captions5": ("all five captions of each image in a step",
                  ["--config.data.captions_per_image=5"]),
    "captions2": ("two captions of each image in a step", ["--config.data.captions_per_image=2"]),
    "captions5_text1": ("all five captions; a 1-layer text transformer with MLP 512 (a third of "
                        "the text FLOPs)",
                        ["--config.data.captions_per_image=5", "--config.model.text.num_layers=1",
                         "--config.model.text.mlp_dim=512"]),
    "small_text_96px_captions2": (
        "1-layer text transformer (MLP 512), 96 px with 12 px patches, two captions per image",
        ["--config.model.text.num_layers=1", "--config.model.text.mlp_dim=512",
         "--config.data.image_size=96", "--config.model.image.stem_stride=12",
         "--config.data.captions_per_image=2"]),
    "small_text_96px_captions2_lr3e-3": (
        "the same at peak learning rate 3e-3",
        ["--config.model.text.num_layers=1", "--config.model.text.mlp_dim=512",
         "--config.data.image_size=96", "--config.model.image.stem_stride=12",
         "--config.data.captions_per_image=2", "--config.optim.learning_rate=3e-3"]),
    "batch256": ("256 images per step", ["--config.batch_size=256"]),
    "res64": ("64 px, 8 px patches (8x8 map)",
              ["--config.data.image_size=64", "--config.model.image.stem_stride=8"]),
    "res96_patch12": ("96 px, 12 px patches (8x8 map)",
                      ["--config.data.image_size=96", "--config.model.image.stem_stride=12"]),
    "res96_patch8": ("96 px, 8 px patches (12x12 map)",
                     ["--config.data.image_size=96", "--config.model.image.stem_stride=8"]),
    "no_crop": ("no random crops", ["--config.data.crop_scale_min=1.0"]),
    "wd0.5": ("weight decay 0.5", ["--config.optim.weight_decay=0.5"]),
    "lr2e-3": ("peak learning rate 2e-3", ["--config.optim.learning_rate=2e-3"]),
}

_DATA_ROOT = flags.DEFINE_string("data_root", None, "The Flickr8k folder (images/, captions.tsv).")
_VARIANTS = flags.DEFINE_list("variants", ["base"], f"Variants to run, in order: {list(VARIANTS)}.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 400, "Training steps of each run (a proxy is "
                                  "shorter than the full config; the schedule follows it).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds to run each variant with.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/f8k_study", "Workdirs and logs go here.")
_LOG = flags.DEFINE_string("log", None, "Markdown file to append the rows to (default: "
                           "<out_dir>/rows.md).")
_EXTRA = flags.DEFINE_list("extra", [], "Overrides added to every run, e.g. "
                           "--extra=--config.batch_size=256.")
flags.mark_flags_as_required(["data_root"])


def _bench_pairs_per_sec(overrides: list[str]) -> float:
  """bench/train_step.py's pairs/s for the config with `overrides`, measured now."""
  out = subprocess.run([sys.executable, "bench/train_step.py", f"--config={CONFIG}", *overrides],
                       cwd=ROOT, check=True, capture_output=True, text=True).stdout
  return float(re.search(r"-> ([\d.]+) pairs/s", out).group(1))


def _final_val(workdir: str) -> dict:
  """The last record of metrics.jsonl that holds val figures."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if "val/rsum" in r][-1]


def _row(name: str, command: str, steps: int, wall_s: float, pairs_per_sec: float, val: dict,
         what: str) -> str:
  figures = " / ".join(f"{val[f'val/{d}_r{k}']:.3f}" for d in ("i2t", "t2i") for k in (1, 5, 10))
  return (f"| {name} | `{command}` | {steps} | {wall_s / 60:.1f} min | {pairs_per_sec:.1f} | "
          f"{figures} | {val['val/rsum']:.3f} | {what} |")


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
    print(f"[{time.strftime('%H:%M:%S')}] {name}: bench/train_step.py {pairs_per_sec:.1f} pairs/s",
          flush=True)
    for seed in _SEEDS.value:
      workdir = os.path.join(_OUT_DIR.value, f"{name}_s{seed}")
      args = [sys.executable, "train.py", f"--config={CONFIG}",
              f"--config.data.root={_DATA_ROOT.value}", f"--workdir={workdir}",
              f"--config.seed={seed}", *overrides]
      command = shlex.join(["python", *args[1:]])
      print(f"[{time.strftime('%H:%M:%S')}] {name}, seed {seed}: {command}", flush=True)
      start = time.perf_counter()
      with open(f"{workdir}.log", "w") as out:
        subprocess.run(args, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
      row = _row(f"{name} (seed {seed})", command, _NUM_STEPS.value,
                 time.perf_counter() - start, pairs_per_sec, _final_val(workdir), what)
      with open(log, "a") as f:
        f.write(row + "\n")
      print(row, flush=True)


if __name__ == "__main__":
  app.run(main)
