"""Running a function over many items in batches of one fixed shape (so a jitted function compiles
once), with a progress bar for long work: the one batching loop of embedding, evaluation and the
feature cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm


def apply_in_batches(
  fn: Callable,
  items_N: Sequence,
  batch_size: int,
  *,
  prepare: Callable | None = None,
  desc: str | None = None,
) -> np.ndarray:
  """fn(prepare(batch)) -> [batch_size, ...] over every item, concatenated in order: [N, ...].

  The last batch is padded to batch_size by repeating its final item, and the padding rows are
  dropped from fn's output. `items_N` is an array (sliced by rows) or any sequence (each batch a
  list of items); `prepare` turns a batch of items into fn's input (decode images, tokenize
  texts), default: the batch itself. `desc` shows a progress bar under that name (on a
  terminal).
  """
  if not len(items_N):
    raise ValueError("Nothing to apply the function to: there are no items.")
  outputs = []
  starts = range(0, len(items_N), batch_size)
  # A bar on a terminal only (disable=None): in a log file its redraws would run into the lines.
  for start in tqdm(
    starts, desc=desc, unit="batch", leave=False, disable=True if desc is None else None
  ):
    batch = items_N[start : start + batch_size]
    valid = len(batch)
    if isinstance(batch, np.ndarray):
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - valid, axis=0)])
    else:
      batch = list(batch) + [batch[-1]] * (batch_size - valid)
    outputs.append(np.asarray(fn(batch if prepare is None else prepare(batch)))[:valid])
  return np.concatenate(outputs)
