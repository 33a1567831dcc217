"""The k images of an index most similar to a query, in bounded memory
(jclip.evaluation.query.top_k: a memory-mapped index is read in chunks of rows)."""

from __future__ import annotations

import numpy as np

from jclip.errors import UserError
from jclip.evaluation.query import CHUNK_ROWS, top_k


def require_rows(emb_ND: np.ndarray) -> None:
  if not len(emb_ND):
    raise UserError("The index holds no image: none of its folder's files could be read.")


def top_k_rows(
  emb_ND: np.ndarray, query_D: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
  """(rows [k], scores [k]): the k rows of an index's emb_ND with the highest dot product with
  query_D (the cosine similarity, for unit rows), best first; equal scores in row order."""
  require_rows(emb_ND)
  return top_k(query_D, emb_ND, k, chunk_rows)
