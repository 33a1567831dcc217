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

# Gallery rows scored at once by top_k: 32,768 x 256 float32 is 32 MiB.
CHUNK_ROWS = 32768


def best_positions(scores_N: np.ndarray, k: int) -> np.ndarray:
  """Positions of the k highest scores, best first; equal scores in position order, exactly, also
  for ties at the k-th score."""
  if len(scores_N) > k:
    kth_best = np.partition(scores_N, len(scores_N) - k)[len(scores_N) - k]
    candidates = np.flatnonzero(scores_N >= kth_best)  # k or more (ties), in position order
  else:
    candidates = np.arange(len(scores_N))
  return candidates[np.argsort(-scores_N[candidates], kind="stable")[:k]]


def top_k(query_emb_D: np.ndarray, gallery_emb_ND: np.ndarray, k: int, chunk_rows=CHUNK_ROWS):
  """(indices [k], cosine similarities [k]) of the k gallery items closest to the query (for unit
  rows; the dot product), best first; equal scores keep gallery order. The gallery is read
  `chunk_rows` rows at a time (a memory-mapped index from disk as it goes) and each chunk keeps
  its own k best, so memory is O(chunk_rows * D + k) whatever N is. Fewer than k when N is
  smaller."""
  query_emb_D = np.asarray(query_emb_D, np.float32)
  rows, scores = [], []
  for start in range(0, len(gallery_emb_ND), chunk_rows):
    scores_C = np.asarray(gallery_emb_ND[start : start + chunk_rows]) @ query_emb_D
    best = best_positions(scores_C, k)
    rows.append(start + best)
    scores.append(scores_C[best])
  # The candidates are in row order, chunk after chunk: position order is row order.
  rows, scores = np.concatenate(rows), np.concatenate(scores)
  best = best_positions(scores, k)
  return rows[best], scores[best]


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
