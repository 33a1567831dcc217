"""Reading image files: decoded completely, upright (their EXIF orientation applied), as RGB; and
resized to the square uint8 array a model expects:

    resize_and_center_crop(open_image(path), size)
    resize_and_center_crop(as_rgb_image(path_or_pil_or_array), size)

`list_image_files(folder)` finds the images of a folder tree. `upright_jpeg_bytes` is what a folder
dataset stores of an image file, and `content_digest` of those bytes tells whether two files hold
the same image.
"""

from __future__ import annotations

import hashlib
import io
import os

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


EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels must be turned to stand upright


def upright_jpeg_bytes(data: bytes, name: str) -> bytes:
  """An image file's bytes `data` as an upright RGB JPEG, checked to decode completely: the file
  itself when it is one already, else the image re-encoded as one (greyscale, RGBA, CMYK,
  palette, PNG, or an EXIF orientation to apply). Equal files give equal bytes. Raises
  ImageFileError, naming the file `name`, for one that does not decode."""
  image = open_image(io.BytesIO(data), name)
  with Image.open(io.BytesIO(data)) as original:
    if (original.format, original.mode, original.getexif().get(EXIF_ORIENTATION, 1)) == (
      "JPEG",
      "RGB",
      1,
    ):
      return data
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def content_digest(jpeg_bytes: bytes) -> str:
  """What tells two images apart: the sha256 of their `upright_jpeg_bytes` (the bytes that a folder
  dataset stores), so the same file gives the same digest wherever it lies."""
  return hashlib.sha256(jpeg_bytes).hexdigest()


def resize_and_center_crop(image: Image.Image, size: int) -> np.ndarray:
  """Scales the shorter side to `size` (bicubic) and crops the centre square: uint8 [S, S, 3]."""
  image = image.convert("RGB")
  scale = size / min(image.size)
  width, height = (max(size, round(d * scale)) for d in image.size)
  image = image.resize((width, height), Image.BICUBIC)
  left, top = (width - size) // 2, (height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


# What a folder of photos is searched for (by extension, case-insensitive): formats Pillow decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def list_image_files(folder: str | os.PathLike) -> list[str]:
  """Every image file under `folder` (recursively, by IMAGE_EXTENSIONS), as paths relative to it in
  sorted order; hidden files and folders (a name starting with '.') are skipped. Raises a
  UserError for a folder that does not exist or holds no image."""
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise UserError(f"{folder} is not a folder: give the folder that holds the images.")
  found = []
  for parent, subfolders, files in os.walk(folder):
    subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
    found += [
      os.path.relpath(os.path.join(parent, name), folder)
      for name in files
      if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
    ]
  if not found:
    raise UserError(
      f"{folder} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}, in "
      "subfolders too)."
    )
  return sorted(found)


def as_rgb_image(image, name: str | None = None) -> Image.Image:
  """An upright RGB Pillow image from a path, a Pillow image (any mode) or a uint8 array ([H, W]
  grey, [H, W, 3] RGB or [H, W, 4] RGBA, any size); `name` is what messages call it."""
  if isinstance(image, (str, os.PathLike)):
    return open_image(os.fspath(image))
  if isinstance(image, Image.Image):
    return ImageOps.exif_transpose(image).convert("RGB")
  array = np.asarray(image)
  if (
    array.dtype != np.uint8
    or array.ndim not in (2, 3)
    or (array.ndim == 3 and array.shape[-1] not in (3, 4))
  ):
    raise ImageFileError(
      f"{name or 'An image array'} has dtype {array.dtype} and shape {array.shape}: give uint8 "
      "pixels [H, W], [H, W, 3] or [H, W, 4] (0-255), a Pillow image or a file path."
    )
  return Image.fromarray(array).convert("RGB")
