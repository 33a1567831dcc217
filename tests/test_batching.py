"""The one batching loop: every item once, in order, in batches of one shape (the last padded by
repeating its final item), from arrays or from any sequence with a `prepare` step; and each batch
spread over every local device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jclip.batching import DeviceSpread, apply_in_batches


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


def test_device_spread_runs_every_row_on_its_share_of_the_devices_with_one_program():
  """On 8 devices, batches of 12 rows (padded to 16: 2 rows per device) give the rows' own results
  in order, each device computing 2 of them (a callback reports the rows each device holds), with
  the function traced, so compiled, once for all the batches."""
  assert jax.local_device_count() == 8, "conftest must force 8 CPU devices"
  spread = DeviceSpread()
  traces, rows_per_device = [], []

  def fn(weights_F, rows_BF):
    traces.append(rows_BF.shape)
    jax.debug.callback(lambda rows: rows_per_device.append(len(rows)), rows_BF, partitioned=True)
    return jnp.tanh(rows_BF @ weights_F)

  weights_F = spread.copy_to_devices(np.linspace(-1, 1, 3, dtype=np.float32))
  rows_NF = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
  run = spread.jit(fn)
  out_N = apply_in_batches(lambda rows: run(weights_F, rows), rows_NF, 12)
  np.testing.assert_allclose(out_N, np.tanh(rows_NF @ np.linspace(-1, 1, 3)), rtol=1e-6)
  assert traces == [(16, 3)]  # three batches of 12, the last padded by apply_in_batches
  jax.effects_barrier()
  assert rows_per_device == [2] * 8 * 3
  np.testing.assert_allclose(run(weights_F, rows_NF[:5]), out_N[:5], rtol=1e-6)  # padding dropped
