"""The step's batches put on the devices ahead of it (jclip/training/inputs.py, OnDevices): in
order, laid out as the pmap'd step reads them, DEVICE_PREFETCH steps early, with the time spent
waiting for them counted."""

import itertools

import jax
import numpy as np

from jclip.training import inputs
from jclip.training.step import pmap_sharding


class FakeClock:
  """time.perf_counter for inputs.py: it moves only when the pipeline below moves it."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_batches_go_on_the_devices_two_steps_ahead_and_the_wait_is_counted(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(inputs.time, "perf_counter", clock)
  fetched = []

  def pipeline():
    """Batch i of 8 rows (one per device) holds i; producing one takes the pipeline 1 s."""
    for index in itertools.count():
      clock.now += 1.0
      fetched.append(index)
      yield {"x": np.full((8, 2), index, np.float32)}

  on_devices = inputs.OnDevices(pipeline())
  assert inputs.DEVICE_PREFETCH == 2
  first = next(on_devices)
  assert fetched == [0, 1, 2]  # this step's batch and the next two, already on their way
  assert on_devices.wait_seconds == 3.0
  assert first["x"].sharding == pmap_sharding(jax.local_device_count())  # read in place
  np.testing.assert_array_equal(first["x"], 0)

  clock.now += 10.0  # a step that ran while nothing was asked for: no waiting counted
  assert [int(next(on_devices)["x"][0, 0]) for _ in range(3)] == [1, 2, 3]
  assert fetched == [0, 1, 2, 3, 4, 5]  # one more for each step
  assert on_devices.wait_seconds == 6.0
