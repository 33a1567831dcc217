"""Running a function over many items in batches of one fixed shape (so a jitted function compiles
once), with a progress bar for long work: the one batching loop of embedding, evaluation and the
feature cache; and `DeviceSpread`, which runs each batch on every local device at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
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


class DeviceSpread:
  """Data parallelism for functions of (constants, batch): the batch's rows split evenly over
  `devices` (default: every local device), the constants (a model's variables) copied to each.
  An 8-GPU host embeds on all 8 at once, with one jitted program per batch shape and no
  communication between the devices (each row is computed on its own)."""

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    mesh = Mesh(np.array(devices or jax.local_devices()), ("rows",))
    self.num_devices = mesh.size
    self._copies = NamedSharding(mesh, PartitionSpec())
    self._rows = NamedSharding(mesh, PartitionSpec("rows"))

  def copy_to_devices(self, tree):
    """`tree` copied to every device. Pass the result to each call: a tree already there is not
    copied again, where host arrays would be copied at every call."""
    return jax.device_put(tree, self._copies)

  def jit(self, fn: Callable) -> Callable:
    """fn(constants, batch_B) -> [B, ...], jitted, as a function of host or device arrays that
    returns host arrays. A batch whose rows do not divide by the device count is padded with its
    last row, whose copies' outputs are dropped."""
    jitted = jax.jit(fn, in_shardings=(self._copies, self._rows), out_shardings=self._rows)

    def run(constants, batch_B) -> np.ndarray:
      rows = len(batch_B)
      padding = -rows % self.num_devices
      if padding:
        batch_B = np.concatenate([batch_B, np.repeat(batch_B[-1:], padding, axis=0)])
      # On the devices before the call: with several processes jit takes no host array to split.
      batch_B = jax.device_put(batch_B, self._rows)
      return np.asarray(jitted(self.copy_to_devices(constants), batch_B))[:rows]

    return run
