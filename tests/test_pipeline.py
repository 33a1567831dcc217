"""The train input pipeline: shapes, determinism from (seed, step), per-host shards."""

import itertools

import numpy as np
import pytest

from jclip.data.pipeline import train_batches
from jclip.data.synthetic import CaptionedShapes
from jclip.pixels import denormalize_images, normalize_images

SOURCE = CaptionedShapes("train", 40, image_size=8)


def _tokenize(captions):
  """A stand-in tokenizer: one row per caption holding its characters' codes."""
  out = np.zeros((len(captions), 64), np.int32)
  for row, caption in enumerate(captions):
    codes = [ord(c) for c in caption[:64]]
    out[row, : len(codes)] = codes
  return out


def _batches(n, **kwargs):
  args = dict(image_size=8, global_batch_size=8, num_local_devices=2, seed=0, num_threads=1)
  return list(itertools.islice(iter(train_batches(SOURCE, _tokenize, **{**args, **kwargs})), n))


def test_batches_are_shaped_for_pmap():
  batch = _batches(1)[0]
  assert batch["image"].shape == (2, 4, 8, 8, 3) and batch["image"].dtype == np.float32
  assert batch["tokens"].shape == (2, 4, 64) and batch["tokens"].dtype == np.int32


def test_resuming_at_step_s_replays_the_same_batches():
  full = _batches(8)
  resumed = _batches(3, start_step=5)
  assert len(resumed) == len(full[5:]) == 3
  for a, b in zip(full[5:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_each_epoch_sees_every_image_once_in_a_new_order():
  images = [b["image"].reshape(-1, 8 * 8 * 3) for b in _batches(10)]  # 80 = two epochs of 40
  epoch1, epoch2 = np.concatenate(images[:5]), np.concatenate(images[5:])
  expected = np.sort(
    normalize_images(np.stack([SOURCE[i]["image"] for i in range(40)])).reshape(40, -1), axis=0
  )
  np.testing.assert_allclose(np.sort(epoch1, axis=0), expected)
  np.testing.assert_allclose(np.sort(epoch2, axis=0), expected)
  assert not np.array_equal(epoch1, epoch2)


def test_hosts_read_disjoint_shares_of_the_same_global_batches():
  one_host = _batches(2, num_local_devices=1)
  hosts = [_batches(2, num_local_devices=1, process_index=p, process_count=2) for p in range(2)]
  for step in range(2):
    whole = one_host[step]["image"].reshape(8, -1)
    parts = np.concatenate([h[step]["image"].reshape(4, -1) for h in hosts])
    np.testing.assert_allclose(np.sort(parts, axis=0), np.sort(whole, axis=0))


def test_indivisible_batch_is_a_clear_error():
  with pytest.raises(ValueError, match="batch_size=10"):
    _batches(1, global_batch_size=10, num_local_devices=4)


def test_normalisation_round_trips():
  images = np.stack([SOURCE[i]["image"] for i in range(5)])
  np.testing.assert_allclose(denormalize_images(normalize_images(images)) * 255, images, atol=1e-3)


def test_several_captions_per_image_are_different_captions_of_that_image_in_image_order():
  captions_of = {
    normalize_images(SOURCE[i]["image"]).tobytes(): {
      tuple(row) for row in _tokenize(SOURCE[i]["captions"])
    }
    for i in range(40)
  }
  batch = _batches(1, captions_per_image=3)[0]
  assert batch["tokens"].shape == (2, 12, 64)
  images = batch["image"].reshape(8, 8, 8, 3)
  tokens = batch["tokens"].reshape(8, 3, 64)  # image by image, as clip_loss expects
  for image, rows in zip(images, tokens, strict=True):
    own = captions_of[image.tobytes()]
    assert {tuple(row) for row in rows} <= own
    assert len({tuple(row) for row in rows}) == min(3, len(own))


def test_several_captions_per_image_are_deterministic_given_seed_and_step():
  full = _batches(4, captions_per_image=2)
  again = _batches(2, captions_per_image=2, start_step=2)
  for a, b in zip(full[2:], again, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  other_seed = _batches(4, captions_per_image=2, seed=1)
  assert not np.array_equal(full[0]["tokens"], other_seed[0]["tokens"])
