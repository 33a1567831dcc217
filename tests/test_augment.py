"""Training and evaluation views of an image."""

import numpy as np

from jclip.data.augment import eval_view, train_view


def _gradient_image(height=40, width=60):
  rows, cols = np.mgrid[0:height, 0:width]
  return np.stack([rows * 6, cols * 4, np.full_like(rows, 128)], -1).astype(np.uint8)


def test_eval_view_is_the_centre_square_resized():
  image = _gradient_image()
  view = eval_view(image, 20)
  assert view.shape == (20, 20, 3)
  # The centre crop of a 40x60 image spans columns 10..50: its mean column value is the middle one.
  np.testing.assert_allclose(view[..., 1].mean(), image[:, 10:50, 1].mean(), rtol=0.03)
  assert eval_view(view, 20) is view  # the right size already: untouched


def test_train_views_are_random_crops_deterministic_in_the_rng():
  image = _gradient_image()
  views = [train_view(image, 16, np.random.default_rng(i), 0.3, flip=False) for i in range(6)]
  assert all(v.shape == (16, 16, 3) for v in views)
  assert len({v.tobytes() for v in views}) == 6
  again = train_view(image, 16, np.random.default_rng(3), 0.3, flip=False)
  np.testing.assert_array_equal(again, views[3])


def test_flip_mirrors_about_half_the_views_and_no_crop_means_no_randomness():
  image = _gradient_image(32, 32)
  flipped = [train_view(image, 32, np.random.default_rng(i), 1.0, flip=True) for i in range(40)]
  mirrored = sum(np.array_equal(v, image[:, ::-1]) for v in flipped)
  assert 10 <= mirrored <= 30
  assert all(np.array_equal(v, image) or np.array_equal(v, image[:, ::-1]) for v in flipped)
