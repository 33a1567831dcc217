"""eval.py's queries: a text -> a split's top-k images, an image -> its top-k captions, an input ->
a classifier's or zero-shot's class probabilities. Each is printed, its hits named by file, and
saved as JSON (and a PNG grid of a text query's images) through EvalOutputs.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from jclip.data.sources import image_name  # noqa: E402
from jclip.evaluation.outputs import EvalOutputs  # noqa: E402
from jclip.slug import slug  # noqa: E402


def top_k(query_emb_D: np.ndarray, gallery_emb_ND: np.ndarray, k: int):
  """(indices [k], cosine similarities [k]) of the k gallery items closest to the query, best first;
  equal scores keep gallery order."""
  scores_N = gallery_emb_ND @ query_emb_D
  order = np.argsort(-scores_N, kind="stable")[:k]
  return order, scores_N[order]


def save_image_grid(
  images: Sequence[np.ndarray], titles: Sequence[str], path: str, suptitle: str = ""
) -> None:
  """Writes images side by side with a title over each (its lines wrapped at 28 characters)."""
  fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 3.6), squeeze=False)
  for ax, image, title in zip(axes[0], images, titles, strict=True):
    ax.imshow(image)
    lines = [wrapped for line in title.split("\n") for wrapped in textwrap.wrap(line, 28)]
    ax.set_title("\n".join(lines), fontsize=8)
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report_text_query(
  query: str,
  query_emb_D: np.ndarray,
  source,
  image_emb_ND: np.ndarray,
  k: int,
  outputs: EvalOutputs,
) -> list[dict]:
  """The split's top-k images for a text: printed with their files, scores and first captions,
  saved as query_text_<query>.json and a PNG grid. Returns the hits."""
  indices, scores = top_k(query_emb_D, image_emb_ND, k)
  hits = [
    {
      "rank": rank,
      "image": image_name(source, index),
      "index": int(index),
      "score": float(score),
      "caption": source.captions(index)[0],
    }
    for rank, (index, score) in enumerate(zip(indices, scores, strict=True), 1)
  ]
  print(f"Top {len(hits)} {source.split} images for {query!r}:")
  for hit in hits:
    print(f"  {hit['rank']}. {hit['image']}  score {hit['score']:.4f}  ({hit['caption']})")
  stem = f"query_text_{slug(query, default='query')}"
  outputs.json(f"{stem}.json", {"query": query, "split": source.split, "hits": hits})
  save_image_grid(
    [source[hit["index"]]["image"] for hit in hits],
    [f"{hit['image']}  {hit['score']:.3f}\n{hit['caption']}" for hit in hits],
    outputs.path(f"{stem}.png"),
    suptitle=query,
  )
  return hits


def report_image_query(
  path: str,
  query_emb_D: np.ndarray,
  source,
  captions: Sequence[str],
  text_to_image_M: np.ndarray,
  text_emb_MD: np.ndarray,
  k: int,
  outputs: EvalOutputs,
) -> list[dict]:
  """The split's top-k captions for an image file: printed with their scores and the file of the
  image each describes, saved as query_image_<file>.json. Returns the hits."""
  indices, scores = top_k(query_emb_D, text_emb_MD, k)
  hits = [
    {
      "rank": rank,
      "caption": captions[index],
      "score": float(score),
      "image": image_name(source, text_to_image_M[index]),
    }
    for rank, (index, score) in enumerate(zip(indices, scores, strict=True), 1)
  ]
  print(f"Top {len(hits)} {source.split} captions for {path}:")
  for hit in hits:
    print(f"  {hit['rank']}. score {hit['score']:.4f}  {hit['caption']!r} ({hit['image']})")
  stem = f"query_image_{slug(os.path.basename(path), default='image')}"
  outputs.json(f"{stem}.json", {"query_image": path, "split": source.split, "hits": hits})
  return hits


def format_probabilities(class_names: Sequence[str], probs_C: np.ndarray) -> str:
  """One line per class, most probable first: "  dog     0.912"."""
  width = max(map(len, class_names))
  return "\n".join(
    f"  {class_names[c]:<{width}}  {probs_C[c]:.3f}" for c in np.argsort(-probs_C, kind="stable")
  )


def report_probabilities(
  heading: str, class_names: Sequence[str], probs_C: np.ndarray, outputs: EvalOutputs, record: dict
) -> dict[str, float]:
  """Prints `heading` and the classes' probabilities, most probable first, and saves them with
  `record` (what was classified; its "name" names the file: <name>.json); returns {class:
  probability}."""
  probabilities = dict(zip(class_names, map(float, probs_C), strict=True))
  print(f"{heading}\n{format_probabilities(class_names, probs_C)}")
  outputs.json(f"{record['name']}.json", {**record, "probabilities": probabilities})
  return probabilities
