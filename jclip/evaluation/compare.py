"""Trained workdirs side by side: one row per workdir, the figures of the evaluation stack.

  retrieval    R@1/5/10 image -> text and text -> image, rsum     RetrievalEvaluator
  zero-shot    top-1 with zeroshot.DEFAULT_TEMPLATES              ZeroShotEvaluator
               (a labelled split only)
  separation   mean cosine of the matched image-caption pairs     similarity.py, on every image
               minus that of the unmatched ones                   of the split with its first
                                                                  caption

Each workdir is scored on the split of its own data: the same images when the runs were trained
on the same data, and the table warns when they were not (each row records the data it read).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from jclip.evaluation.embedding import EvalSplit, Predictor  # noqa: E402
from jclip.evaluation.evaluators import RECALLS, RetrievalEvaluator, ZeroShotEvaluator  # noqa: E402
from jclip.evaluation.similarity import separation_score, similarity_matrix  # noqa: E402
from jclip.evaluation.zeroshot import DEFAULT_TEMPLATES  # noqa: E402
from jclip.runs.checkpoint import Selected  # noqa: E402

# The figures of a row, in the table's order, with their column titles.
COLUMNS = {
  **{name: name.replace("_r", " R@") for name in RECALLS},
  "rsum": "rsum",
  "zeroshot_top1": "zero-shot",
  "separation": "separation",
}


def workdir_row(
  workdir: str,
  checkpoint: Selected,
  split: EvalSplit,
  predictor: Predictor,
  variables,
  batch_size: int,
) -> dict:
  """One workdir's figures (COLUMNS; zeroshot_top1 is None on a split without classes) and what
  they were measured on.

  Args:
    checkpoint: which of the workdir's checkpoints `variables` are (its step, and why).
    split, predictor, variables: the workdir's split and model, as eval.py builds them.
  """
  retrieval = RetrievalEvaluator(split, predictor, batch_size)
  row = {
    "workdir": workdir,
    "step": checkpoint.step,
    "checkpoint": checkpoint.reason,
    "data": getattr(split.source, "fingerprint", repr(split.source)),
    "num_images": len(split.source),
    **retrieval.figures(retrieval(variables)),
    "zeroshot_top1": None,
  }
  if split.class_names is not None:
    row["zeroshot_top1"] = ZeroShotEvaluator(split, predictor, batch_size)(variables)[
      "top1_accuracy"
    ]
  embedded = split.embed(predictor, variables, batch_size)  # retrieval's embeddings, not anew
  sim_NN = similarity_matrix(embedded.image_emb_ND, embedded.text_emb_MD[embedded.first_caption_N])
  row["separation"] = separation_score(sim_NN)
  return row


def format_comparison(rows: Sequence[dict], split: str) -> str:
  """The rows as a table, and a note when they were measured on different data."""
  width = max(len("workdir"), *(len(row["workdir"]) for row in rows))
  widths = [max(6, len(title)) for title in COLUMNS.values()]
  lines = [
    f"Workdirs on their {split} split (zero-shot: the {len(DEFAULT_TEMPLATES)} default templates;"
    "\n  separation: matched minus unmatched cosine, every image with its first caption):",
    f"{'workdir':<{width}}  {'step':>6}  {'images':>6}"
    + "".join(f"  {title:>{w}}" for title, w in zip(COLUMNS.values(), widths, strict=True)),
  ]
  for row in rows:
    figures = ["n/a" if row[name] is None else f"{row[name]:.3f}" for name in COLUMNS]
    lines.append(
      f"{row['workdir']:<{width}}  {row['step']:>6}  {row['num_images']:>6}"
      + "".join(f"  {figure:>{w}}" for figure, w in zip(figures, widths, strict=True))
    )
  data = sorted({row["data"] for row in rows})
  if len(data) > 1:
    lines.append(f"Note: the rows were measured on different data ({', '.join(data)}).")
  return "\n".join(lines)


def save_comparison_png(rows: Sequence[dict], path: str) -> None:
  """Grouped bars: each figure in [0, 1] (the recalls, zero-shot, separation), a bar per
  workdir."""
  names = [name for name in COLUMNS if name != "rsum"]
  x = np.arange(len(names))
  width = 0.8 / len(rows)
  fig, ax = plt.subplots(
    figsize=(max(7.0, 0.9 * len(names) * max(1, len(rows) / 2)), 4.6 + 0.2 * len(rows))
  )
  for index, row in enumerate(rows):
    values = [np.nan if row[name] is None else row[name] for name in names]
    ax.bar(
      x - 0.4 + width * (index + 0.5),
      values,
      width,
      label=f"{row['workdir']} (step {row['step']}, rsum {row['rsum']:.3f})",
    )
  ax.set_xticks(x, [COLUMNS[name] for name in names], rotation=30, ha="right")
  ax.set_ylim(min(0.0, np.nanmin([row["separation"] for row in rows])), 1)
  ax.set_title("workdirs side by side", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
