"""What a model's input image is: RGB normalised per channel with the mean and std of CLIP's
training set. The data pipeline writes it, the towers read it (a pretrained tower converts it to
the scaling it was trained with), plots undo it."""

from __future__ import annotations

import numpy as np

IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize_images(images_uint8):
  """uint8 [..., H, W, 3] -> float32 with the per-channel mean removed and unit std."""
  return (np.asarray(images_uint8, np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD


def denormalize_images(images):
  """The inverse of `normalize_images`, back to float RGB in [0, 1] for display."""
  return np.clip(np.asarray(images) * IMAGE_STD + IMAGE_MEAN, 0.0, 1.0)
