"""Cleaning a collection by its embeddings: near-duplicate pairs, and the images most off-topic for
a description or for the collection as a whole. Every pass reads [N, D] in chunks of rows, so a
memory-mapped index of any size is never held whole, nor its N x N similarities."""

from __future__ import annotations

import dataclasses

import numpy as np

from jclip.collection.search import CHUNK_ROWS, require_rows, top_k_rows
from jclip.errors import UserError

# Pairs kept by a duplicate scan: the most similar, whatever the threshold lets through.
MAX_PAIRS = 10_000
# Rows per side of a block of the similarity matrix: 4,096^2 float32 is 64 MiB.
BLOCK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class DuplicatePairs:
  """Pairs of rows (i < j) at or above a cosine similarity, most similar first (then by rows)."""

  rows_P2: np.ndarray  # int64 [P, 2]
  scores_P: np.ndarray  # float32 [P]
  found: int  # pairs at or above the threshold; more than P when MAX_PAIRS cut the list


def near_duplicate_pairs(
  emb_ND: np.ndarray, threshold: float, block_rows: int = BLOCK_ROWS, max_pairs: int = MAX_PAIRS
) -> DuplicatePairs:
  """Every pair of rows whose dot product is at least `threshold` (in (0, 1]; for unit rows the
  cosine similarity: 0.95 finds an image re-saved at another JPEG quality or size), scored one
  [block_rows, block_rows] block of the upper triangle at a time; the `max_pairs` most similar
  are kept."""
  if not 0 < threshold <= 1:
    raise UserError(f"The duplicate threshold {threshold} must be in (0, 1]: a cosine similarity.")
  rows_P2, scores_P = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
  found = 0
  for a in range(0, len(emb_ND), block_rows):
    block_a = np.asarray(emb_ND[a : a + block_rows])
    for b in range(a, len(emb_ND), block_rows):
      scores_AB = block_a @ np.asarray(emb_ND[b : b + block_rows]).T
      i, j = np.nonzero(scores_AB >= threshold)
      if a == b:  # the diagonal block: each pair once, no image with itself
        i, j = i[j > i], j[j > i]
      found += len(i)
      rows_P2 = np.concatenate([rows_P2, np.stack([a + i, b + j], axis=1)])
      scores_P = np.concatenate([scores_P, scores_AB[i, j]])
      if len(scores_P) > 2 * max_pairs:
        rows_P2, scores_P = _most_similar(rows_P2, scores_P, max_pairs)
  rows_P2, scores_P = _most_similar(rows_P2, scores_P, max_pairs)
  return DuplicatePairs(rows_P2, scores_P, found)


def _most_similar(rows_P2, scores_P, keep):
  order = np.lexsort((rows_P2[:, 1], rows_P2[:, 0], -scores_P))[:keep]
  return rows_P2[order], scores_P[order]


def least_similar_rows(
  emb_ND: np.ndarray, direction_D: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
  """(rows [k], scores [k]): the k rows least similar to `direction_D` (a description's
  embedding, or mean_direction's), least similar first."""
  rows, negated = top_k_rows(emb_ND, -np.asarray(direction_D, np.float32), k, chunk_rows)
  return rows, -negated


def mean_direction(emb_ND: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
  """The collection's mean direction: the unit vector along the sum of its rows [D]. What is far
  from it is far from what most of the collection shows."""
  require_rows(emb_ND)
  total_D = np.zeros(emb_ND.shape[1], np.float64)
  for start in range(0, len(emb_ND), chunk_rows):
    total_D += np.asarray(emb_ND[start : start + chunk_rows], np.float64).sum(axis=0)
  norm = np.linalg.norm(total_D)
  if not norm > 1e-6:
    raise UserError("The collection's embeddings cancel out: it has no mean direction to compare.")
  return (total_D / norm).astype(np.float32)
