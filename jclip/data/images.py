"""Reading image files: decoded completely, upright (their EXIF orientation applied), as RGB; and
resized to the square uint8 array a model expects:

    resize_and_center_crop(open_image(path), size)
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jclip.errors import UserError


class ImageFileError(UserError):
  """A file that cannot be used as an image; the message names it and says why."""


def open_image(file, name: str | None = None) -> Image.Image:
  """Decodes a Pillow-readable image (a path or a binary file object) completely and returns it
  upright as RGB: phone photos store their pixels sideways with an EXIF orientation tag, which is
  applied here; greyscale, RGBA, CMYK... are converted. `name` is what messages call the file."""
  name = name or str(file)
  try:
    with Image.open(file) as image:
      image.load()  # decodes every pixel: a truncated file fails here, not in a worker later
      return ImageOps.exif_transpose(image).convert("RGB")
  except FileNotFoundError:
    raise FileNotFoundError(f"Image file not found: {name}") from None
  except Image.DecompressionBombError as e:
    raise ImageFileError(
      f"{name} is refused as a possible decompression bomb: {e} Shrink the "
      "image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine."
    ) from None
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ImageFileError(
      f"{name} cannot be decoded ({e}): the file is corrupt, truncated or not an image."
    ) from None


def resize_and_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Scales the shorter side to `size` (bicubic) and crops the centre square: uint8 [S, S, 3]."""
  image = image.convert("RGB")
  scale = size / min(image.size)
  width, height = (max(size, round(d * scale)) for d in image.size)
  image = image.resize((width, height), Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
