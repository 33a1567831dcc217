"""PNGs for looking at a model: its embeddings projected to 2-D, and its training curves.

Projections: PCA keeps the two directions of largest variance, a linear map whose distances can be
read (a cluster far from the others in PCA is far in the embedding too). UMAP (if the `umap-learn`
package is installed) bends the space to keep neighbours together: clusters show more clearly, but
distances between clusters mean little.

Training curves read the records of `jclip.runs.metrics.read_metrics(workdir)` and draw one
panel per quantity that is present: loss, temperature, in-batch accuracy, learning rate, and one
per in-loop evaluator ("val/i2t_r10", ... on a panel "val"; rsum, a sum of six, is left out so that
the fractions share one scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

PROJECTION_METHODS = ("pca", "umap")
# (panel title, metric keys drawn on it); a panel appears if any of its keys was logged.
CURVE_PANELS = (
  ("loss", ("loss",)),
  ("temperature 1 / exp(t)", ("temperature",)),
  ("in-batch accuracy (chance: 1 / batch size)", ("i2t_accuracy", "t2i_accuracy")),
  ("learning rate", ("learning_rate",)),
)


def _project(emb_ND: np.ndarray, method: str, seed: int) -> np.ndarray:
  if method == "pca":
    return PCA(n_components=2, random_state=seed).fit_transform(emb_ND)
  try:
    import umap  # noqa: PLC0415  (optional and slow to import: only when asked for)
  except ImportError:
    raise ValueError(
      "method='umap' needs the umap-learn package: pip install umap-learn, or use method='pca'."
    ) from None
  return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(emb_ND)


def save_embedding_projection(
  emb_ND: np.ndarray,
  labels_N: np.ndarray,
  class_names: Sequence[str],
  path: str,
  method: str = "pca",
  title: str | None = None,
  seed: int = 0,
) -> np.ndarray:
  """Scatters the embeddings in 2-D, one colour per class, and returns the 2-D points [N, 2].

  Args:
    emb_ND: image or text embeddings.
    labels_N: integer class of each embedding, an index into class_names.
    method: "pca" (linear, the default) or "umap" (needs umap-learn).
  """
  if method not in PROJECTION_METHODS:
    raise ValueError(f"method={method!r}; choose one of {PROJECTION_METHODS}.")
  emb_ND, labels_N = np.asarray(emb_ND, np.float32), np.asarray(labels_N)
  if emb_ND.ndim != 2 or emb_ND.shape[0] < 2 or emb_ND.shape[1] < 2:
    raise ValueError(
      f"emb has shape {emb_ND.shape}; a 2-D projection needs [N, D] with N >= 2 and D >= 2."
    )
  if labels_N.shape != (len(emb_ND),):
    raise ValueError(
      f"labels has shape {labels_N.shape} but there are {len(emb_ND)} embeddings; "
      "give one label per embedding."
    )
  if not np.issubdtype(labels_N.dtype, np.integer) or (
    labels_N.min() < 0 or labels_N.max() >= len(class_names)
  ):
    raise ValueError(
      f"labels must be integers in [0, {len(class_names)}), indices into class_names."
    )
  points_N2 = _project(emb_ND, method, seed)
  fig, ax = plt.subplots(figsize=(7.5, 6))
  colours = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
  for index, name in enumerate(class_names):
    mask = labels_N == index
    if mask.any():
      ax.scatter(
        points_N2[mask, 0],
        points_N2[mask, 1],
        s=12,
        alpha=0.8,
        label=name,
        color=colours(index % colours.N),
      )
  ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_xlabel(f"{method.upper()} 1")
  ax.set_ylabel(f"{method.upper()} 2")
  ax.set_title(title or f"{len(emb_ND)} embeddings, {method.upper()}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return points_N2


def write_projection(
  outputs, stem: str, emb_ND, labels_N, class_names, method: str, title: str, **about
) -> None:
  """save_embedding_projection as <stem>.png through `outputs` (an EvalOutputs), and its points
  as <stem>.json: `about` (what the rows are), the method, the classes, the labels, the points."""
  points_N2 = save_embedding_projection(
    emb_ND, labels_N, class_names, outputs.path(f"{stem}.png"), method, title=title
  )
  outputs.json(
    f"{stem}.json",
    {
      **about,
      "method": method,
      "class_names": list(class_names),
      "labels": labels_N.tolist(),
      "points": points_N2.tolist(),
    },
  )


def save_training_curves(records: Sequence[dict], path: str, title: str = "") -> list[str]:
  """Draws each logged quantity against the step; returns the titles of the panels drawn.

  Args:
    records: dicts with a "step" and metric values, e.g. from `read_metrics(workdir)`; a key missing
      from some records (an evaluation logged every n steps) is drawn where it is present.
  """
  if not records or any("step" not in record for record in records):
    raise ValueError(
      "records must be a non-empty list of dicts that each have a 'step', e.g. "
      "jclip.runs.metrics.read_metrics(workdir)."
    )
  panels = [
    (name, [key for key in keys if any(key in r for r in records)]) for name, keys in CURVE_PANELS
  ]
  eval_keys = sorted(
    {key for r in records for key in r if "/" in key and not key.endswith("/rsum")}
  )
  for prefix in sorted({key.split("/")[0] for key in eval_keys}):
    panels.append((f"evaluator {prefix}", [k for k in eval_keys if k.startswith(prefix + "/")]))
  panels = [(name, keys) for name, keys in panels if keys]
  if not panels:
    known = sorted({key for _, keys in CURVE_PANELS for key in keys})
    raise ValueError(
      f"records hold none of the plotted metrics {known}; their keys are {sorted(records[0])}."
    )
  fig, axes = plt.subplots(
    len(panels), 1, figsize=(7, 2.3 * len(panels)), sharex=True, squeeze=False
  )
  for ax, (name, keys) in zip(axes[:, 0], panels, strict=True):
    for key in keys:
      steps, values = zip(*[(r["step"], r[key]) for r in records if key in r], strict=True)
      ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=8)
  axes[-1, 0].set_xlabel("step")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return [name for name, _ in panels]
