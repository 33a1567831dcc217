"""Image preprocessing for training (random resized crop, horizontal flip) and evaluation (resize +
centre crop), on uint8 [H, W, 3] arrays with Pillow."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from jclip.data.images import resize_and_center_crop

ASPECT_RATIOS = (3 / 4, 4 / 3)  # range of crop width/height ratios, as in Inception / CLIP


def _crop_box(height: int, width: int, scale_min: float, rng: np.random.Generator):
  """(left, top, right, bottom) of a random crop covering [scale_min, 1] of the area with an
  aspect ratio in ASPECT_RATIOS; the whole image if 10 draws all fall outside it."""
  area = height * width
  log_ratios = np.log(ASPECT_RATIOS)
  for _ in range(10):
    target_area = area * rng.uniform(scale_min, 1.0)
    ratio = math.exp(rng.uniform(*log_ratios))
    crop_w = round(math.sqrt(target_area * ratio))
    crop_h = round(math.sqrt(target_area / ratio))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      left = int(rng.integers(0, width - crop_w + 1))
      top = int(rng.integers(0, height - crop_h + 1))
      return left, top, left + crop_w, top + crop_h
  return 0, 0, width, height


def eval_view(image_HW3: np.ndarray, size: int) -> np.ndarray:
  """The deterministic evaluation view: shorter side to `size`, centre square."""
  if image_HW3.shape[:2] == (size, size):
    return image_HW3
  return resize_and_center_crop(Image.fromarray(image_HW3), size)


def train_view(
  image_HW3: np.ndarray, size: int, rng: np.random.Generator, crop_scale_min: float, flip: bool
) -> np.ndarray:
  """A random training view [size, size, 3]. crop_scale_min >= 1 disables cropping (the image is
  only resized and centre-cropped); `flip` mirrors half of the views left-right."""
  if crop_scale_min >= 1.0:
    view = eval_view(image_HW3, size)
  else:
    box = _crop_box(image_HW3.shape[0], image_HW3.shape[1], crop_scale_min, rng)
    view = np.asarray(
      Image.fromarray(image_HW3).resize((size, size), Image.BICUBIC, box=box), np.uint8
    )
  if flip and rng.random() < 0.5:
    view = view[:, ::-1]
  return view
