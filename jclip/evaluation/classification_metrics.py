"""Classification metrics from integer labels and logits (or predicted labels).

Definitions, for C classes and N examples with true label y_n:

  top-k accuracy   the fraction of examples whose true class is among the k highest logits
                   (k is clipped to C, so top-5 of a 3-class problem is top-3, i.e. 1.0);
                   equal logits rank the lower class index first, as argmax does, so top-1
                   accuracy is the accuracy of the argmax predictions.
  precision_c      of the examples predicted c, the fraction that are c   (0 if none is predicted c)
  recall_c         of the examples that are c, the fraction predicted c   (0 if there are none)
  F1_c             2 P R / (P + R), the harmonic mean, 0 when both are 0
  macro average    the unweighted mean over the classes that occur in the labels, so a rare class
                   counts as much as a common one, and a class absent from the split does not
                   drag the average to zero.

The confusion matrix has one row per true class and one column per predicted class.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _check_labels(labels_N: np.ndarray, num_classes: int) -> np.ndarray:
  labels_N = np.asarray(labels_N)
  if labels_N.ndim != 1 or not np.issubdtype(labels_N.dtype, np.integer):
    raise ValueError(
      f"labels must be a 1-D array of integer class indices, got dtype "
      f"{labels_N.dtype} and shape {labels_N.shape}."
    )
  if not len(labels_N):
    raise ValueError("labels is empty; there is nothing to score.")
  if labels_N.min() < 0 or labels_N.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}) (one per class name); found "
      f"{labels_N.min()}..{labels_N.max()}."
    )
  return labels_N


def top_k_accuracy(labels_N: np.ndarray, logits_NC: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the min(k, C) highest logits (ties: lower index
  first)."""
  logits_NC = np.asarray(logits_NC)
  labels_N = _check_labels(labels_N, logits_NC.shape[1])
  if logits_NC.shape[0] != len(labels_N):
    raise ValueError(
      f"logits has {logits_NC.shape[0]} rows but labels has {len(labels_N)}; "
      "give one row of logits per label."
    )
  top_classes = np.argsort(-logits_NC, axis=1, kind="stable")[:, : min(k, logits_NC.shape[1])]
  return float(np.mean(np.any(top_classes == labels_N[:, None], axis=1)))


def per_class_table(
  labels_N: np.ndarray, predictions_N: np.ndarray, class_names: Sequence[str]
) -> list[dict]:
  """One dict per class: {"class", "precision", "recall", "f1", "support"}; support is the number
  of examples of that class."""
  # Imported here: scikit-learn takes 2 s to import, and train.py and eval.py start without it.
  from sklearn.metrics import precision_recall_fscore_support  # noqa: PLC0415

  precision, recall, f1, support = precision_recall_fscore_support(
    labels_N, predictions_N, labels=np.arange(len(class_names)), zero_division=0
  )
  return [
    {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
    for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
  ]


def format_per_class_table(rows: Sequence[dict]) -> str:
  """The per-class table as aligned text, one line per class."""
  width = max([len("class")] + [len(row["class"]) for row in rows])
  lines = [f"{'class':<{width}}  precision  recall     f1  support"]
  lines += [
    f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
    f"{row['f1']:5.3f}  {row['support']:7d}"
    for row in rows
  ]
  return "\n".join(lines)


def format_scores(metrics: dict) -> str:
  """The macro P/R/F1 line and the per-class table of `classification_metrics`' result, indented
  under a caller's headline."""
  return (
    f"  macro precision {metrics['macro_precision']:.3f}  recall "
    f"{metrics['macro_recall']:.3f}  F1 {metrics['macro_f1']:.3f}\n"
    + textwrap.indent(format_per_class_table(metrics["per_class"]), "  ")
  )


def classification_metrics(
  labels_N: np.ndarray,
  class_names: Sequence[str],
  logits_NC: np.ndarray | None = None,
  predictions_N: np.ndarray | None = None,
) -> dict:
  """Every metric of the module docstring as a JSON-able dict.

  Give either `logits_NC` (then predictions are their argmax, and top-5 accuracy is reported too)
  or `predictions_N` (top-1 only). Keys: num_examples, num_classes, top1_accuracy, [top5_accuracy],
  macro_precision, macro_recall, macro_f1, per_class (see `per_class_table`) and confusion_matrix
  (a list of rows: true class, then predicted class).
  """
  num_classes = len(class_names)
  if (logits_NC is None) == (predictions_N is None):
    raise ValueError("Give exactly one of logits_NC (scores [N, C]) or predictions_N (labels [N]).")
  labels_N = _check_labels(labels_N, num_classes)
  if logits_NC is not None:
    logits_NC = np.asarray(logits_NC)
    if logits_NC.ndim != 2 or logits_NC.shape[1] != num_classes:
      raise ValueError(
        f"logits has shape {logits_NC.shape}; it needs one column per class name "
        f"([N, {num_classes}])."
      )
    predictions_N = np.argmax(logits_NC, axis=1)
  predictions_N = _check_labels(predictions_N, num_classes)
  if len(predictions_N) != len(labels_N):
    raise ValueError(
      f"predictions has {len(predictions_N)} entries but labels has "
      f"{len(labels_N)}; give one prediction (or row of logits) per label."
    )
  metrics = {
    "num_examples": len(labels_N),
    "num_classes": num_classes,
    "top1_accuracy": float(np.mean(predictions_N == labels_N)),
  }
  if logits_NC is not None:
    metrics["top5_accuracy"] = top_k_accuracy(labels_N, logits_NC, 5)
  rows = per_class_table(labels_N, predictions_N, class_names)
  present = [row for row in rows if row["support"] > 0]
  for name in ("precision", "recall", "f1"):
    metrics[f"macro_{name}"] = float(np.mean([row[name] for row in present]))
  metrics["per_class"] = rows
  from sklearn.metrics import confusion_matrix  # noqa: PLC0415  (see per_class_table)

  metrics["confusion_matrix"] = confusion_matrix(
    labels_N, predictions_N, labels=np.arange(num_classes)
  ).tolist()
  return metrics


def save_confusion_matrix_png(
  matrix_CC, class_names: Sequence[str], path: str, title: str = "confusion matrix"
) -> None:
  """Writes the matrix as a heatmap (rows: true class, columns: predicted class), with the counts
  in the cells."""
  matrix_CC = np.asarray(matrix_CC)
  num_classes = len(class_names)
  if matrix_CC.shape != (num_classes, num_classes):
    raise ValueError(
      f"matrix has shape {matrix_CC.shape} but there are {num_classes} class names; "
      "it must be [C, C]."
    )
  size = 2.5 + 0.45 * num_classes
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  image = ax.imshow(matrix_CC, cmap="Blues")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(num_classes), class_names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(num_classes), class_names, fontsize=8)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title, fontsize=10)
  if num_classes <= 20:  # beyond that the numbers no longer fit in the cells
    threshold = matrix_CC.max() / 2
    for row in range(num_classes):
      for col in range(num_classes):
        ax.text(
          col,
          row,
          f"{matrix_CC[row, col]:g}",
          ha="center",
          va="center",
          fontsize=7,
          color="white" if matrix_CC[row, col] > threshold else "black",
        )
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
