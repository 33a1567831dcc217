"""Reading one image file into the square uint8 RGB array a model expects."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError


def resize_and_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Scales the shorter side to `size` (bicubic) and crops the centre square: uint8 [size, size, 3]."""
  image = image.convert("RGB")
  scale = size / min(image.size)
  width, height = (max(size, round(d * scale)) for d in image.size)
  image = image.resize((width, height), Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def load_image(path: str, size: int) -> np.ndarray:
  """Reads any Pillow-readable image (greyscale, RGBA, CMYK... are converted to RGB)."""
  try:
    with Image.open(path) as image:
      return resize_and_center_crop(image, size)
  except FileNotFoundError:
    raise FileNotFoundError(f"Image file not found: {path}") from None
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"Cannot read image {path}: {e}. Is it a complete image file?") from e
