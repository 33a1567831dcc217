"""The k rows of an embedding matrix most similar to a query, in bounded memory: [N, D] is read
`chunk_rows` rows at a time (a memory-mapped index from disk as it goes), and each chunk keeps only
its own k best, so memory is O(chunk_rows * D + k) whatever N is."""

from __future__ import annotations

import numpy as np

from jclip.errors import UserError

# Rows scored at once: 32,768 x 256 float32 is 32 MiB.
CHUNK_ROWS = 32768


def best_positions(scores_N: np.ndarray, k: int) -> np.ndarray:
  """Positions of the k highest scores, best first; equal scores in position order (as
  jclip.evaluation.query.top_k), exactly, also for ties at the k-th score."""
  if len(scores_N) > k:
    kth_best = np.partition(scores_N, len(scores_N) - k)[len(scores_N) - k]
    candidates = np.flatnonzero(scores_N >= kth_best)  # k or more (ties), in position order
  else:
    candidates = np.arange(len(scores_N))
  return candidates[np.argsort(-scores_N[candidates], kind="stable")[:k]]


def require_rows(emb_ND: np.ndarray) -> None:
  if not len(emb_ND):
    raise UserError("The index holds no image: none of its folder's files could be read.")


def top_k_rows(
  emb_ND: np.ndarray, query_D: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
  """(rows [k], scores [k]): the k rows of emb_ND with the highest dot product with query_D (the
  cosine similarity, for unit rows), best first; equal scores in row order. Fewer than k when N
  is smaller."""
  require_rows(emb_ND)
  query_D = np.asarray(query_D, np.float32)
  rows, scores = [], []
  for start in range(0, len(emb_ND), chunk_rows):
    scores_C = np.asarray(emb_ND[start : start + chunk_rows]) @ query_D
    best = best_positions(scores_C, k)
    rows.append(start + best)
    scores.append(scores_C[best])
  # The candidates are in row order, chunk after chunk: position order is row order.
  rows, scores = np.concatenate(rows), np.concatenate(scores)
  best = best_positions(scores, k)
  return rows[best], scores[best]
