"""The one batching loop: every item once, in order, in batches of one shape (the last padded by
repeating its final item), from arrays or from any sequence with a `prepare` step."""

import numpy as np
import pytest

from jclip.batching import apply_in_batches


def test_every_row_once_in_order_and_every_batch_of_one_shape():
  shapes = []

  def fn(batch):
    shapes.append(batch.shape)
    return batch * 10

  out = apply_in_batches(fn, np.arange(40).reshape(20, 2), 8)
  np.testing.assert_array_equal(out, np.arange(40).reshape(20, 2) * 10)
  assert shapes == [(8, 2)] * 3  # 8, 8 and 4 rows padded to 8: one compiled shape


def test_a_sequence_is_prepared_batch_by_batch_and_padded_with_its_last_item():
  prepared = []

  def prepare(items):
    prepared.append(list(items))
    return np.array([[len(item)] for item in items])

  words = ["a", "bb", "ccc", "dddd", "eeeee"]
  out = apply_in_batches(lambda x: x + 1, words, 2, prepare=prepare)
  np.testing.assert_array_equal(out[:, 0], [2, 3, 4, 5, 6])
  assert prepared == [["a", "bb"], ["ccc", "dddd"], ["eeeee", "eeeee"]]


def test_nothing_to_apply_is_refused():
  with pytest.raises(ValueError, match="no items"):
    apply_in_batches(lambda x: x, [], 4)
