"""A run killed between two checkpoints resumes to exactly the uninterrupted run: parameters,
optimiser state, moving average and step; and every step is logged once, in metrics.jsonl and in
TensorBoard."""

import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jclip.runs.checkpoint import Checkpoints
from jclip.runs.metrics import TENSORBOARD_DIR, read_metrics
from jclip.training import inputs, loop


class Killed(Exception):
  pass


def _config():
  """Logs every step, checkpoints every 4th: a death at step 5 loses step 5, which is replayed.
  Two captions per image: the replayed steps must pick the same captions. Two accumulated chunks
  per step (tests/test_train.py resumes without): the replayed steps must read the same pairs and
  draw the same masks in each chunk. A moving average of the weights: it resumes too (the
  checkpoint's model is the average, the raw weights travel with the optimiser)."""
  from conftest import tiny_clip_config

  config = tiny_clip_config()  # text dropout on: the replayed steps must draw the same masks
  config.data.captions_per_image = 2
  config.accum_steps = 2
  config.optim.ema_decay = 0.9
  config.log_every, config.checkpoint_every = 1, 4
  for entry in config.evals.values():
    entry.every = 3
  return config


def _assert_same_trees(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_death_between_checkpoints_resumes_exactly_and_logs_each_step_once(tmp_path, monkeypatch):
  config = _config()
  uninterrupted = loop.train(config, str(tmp_path / "uninterrupted"))

  workdir = str(tmp_path / "killed")
  real_train_batches = inputs.train_batches

  def batches_then_death(*args, **kwargs):
    """The real stream, but the process dies asking for the batch after the first 5 +
    DEVICE_PREFETCH (the loop asks for batches that many steps ahead): steps 1-5 ran and were
    logged, the last checkpoint is step 4."""
    batches = iter(real_train_batches(*args, **kwargs))
    for _ in range(5 + inputs.DEVICE_PREFETCH):
      yield next(batches)
    raise Killed

  monkeypatch.setattr(inputs, "train_batches", batches_then_death)
  with pytest.raises(Killed):
    loop.train(config, workdir)
  monkeypatch.undo()
  assert Checkpoints(workdir, create=False).latest_step() == 4
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4, 5]

  resumed = loop.train(config, workdir)
  assert int(resumed.step) == int(uninterrupted.step) == 6
  _assert_same_trees(resumed.params, uninterrupted.params)
  _assert_same_trees(resumed.opt_state, uninterrupted.opt_state)
  _assert_same_trees(resumed.ema_params, uninterrupted.ema_params)

  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # step 5 once, from the resumed run
  expected = read_metrics(str(tmp_path / "uninterrupted"))
  assert [r["loss"] for r in records] == [r["loss"] for r in expected]
  events = EventAccumulator(os.path.join(workdir, TENSORBOARD_DIR))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [
    (r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records
  ]
  assert [e.step for e in events.Scalars("val/rsum")] == [3, 6]
