"""A folder of "photos" to try eval.py --images on with the quickstart model: shapes drawn as the
embedded data draws them, in subfolders by colour, as JPEG, PNG and WebP, with a few planted
problems to find.

  python scripts/make_shape_photos.py --out=/tmp/shape_photos

Writes --count images of distinct shapes (128 px), then, to be found: copies/ holds three of them
re-encoded (a JPEG at quality 40, a half-size PNG, a JPEG at quality 60 of the 100 px image);
odd/gradient.png shows no shape at all; broken/truncated.jpg is a JPEG cut in half.
"""

import os

import numpy as np
from absl import app, flags
from PIL import Image

from jclip.data.synthetic import COMBINATIONS, render

_OUT = flags.DEFINE_string("out", None, "The folder to write (created).")
_COUNT = flags.DEFINE_integer("count", 60, "Distinct shapes.", lower_bound=4, upper_bound=350)
_SIZE = flags.DEFINE_integer("size", 128, "Side of the images in pixels.", lower_bound=16)
flags.mark_flags_as_required(["out"])

FORMATS = ((".jpg", {"quality": 90}), (".png", {}), (".webp", {"quality": 90}))


def _save(image: Image.Image, path: str, **options) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **options)


def main(argv):
  del argv
  out, size = _OUT.value, _SIZE.value
  rng = np.random.default_rng(0)
  combinations = rng.permutation(len(COMBINATIONS))[: _COUNT.value]
  images = []
  for i, combination in enumerate(combinations):
    kind, colour, shape_size, position = COMBINATIONS[combination]
    image = Image.fromarray(render(kind, colour, shape_size, position, size, rng))
    extension, options = FORMATS[i % len(FORMATS)]
    name = f"{shape_size}_{kind}_{position.replace(' ', '_')}{extension}"
    _save(image, os.path.join(out, colour, name), **options)
    images.append((f"{colour}_{name.rsplit('.', 1)[0]}", image))
  (first, a), (second, b), (third, c) = images[:3]
  _save(a, os.path.join(out, "copies", f"{first}_q40.jpg"), quality=40)
  _save(
    b.resize((size // 2, size // 2), Image.BICUBIC),
    os.path.join(out, "copies", f"{second}_half.png"),
  )
  smaller = c.resize((100, 100), Image.BICUBIC)
  _save(smaller, os.path.join(out, "copies", f"{third}_100px_q60.jpg"), quality=60)
  ramp = np.linspace(0, 255, size, dtype=np.float32)
  gradient = np.stack(
    [ramp[None].repeat(size, 0), ramp[:, None].repeat(size, 1), 255 - ramp[None].repeat(size, 0)],
    -1,
  )
  _save(Image.fromarray(gradient.astype(np.uint8)), os.path.join(out, "odd", "gradient.png"))
  truncated = os.path.join(out, "broken", "truncated.jpg")
  _save(a, truncated, quality=90)
  with open(truncated, "rb") as f:
    data = f.read()
  with open(truncated, "wb") as f:
    f.write(data[: len(data) // 2])
  print(
    f"Wrote {len(images)} shapes, 3 re-encoded copies, 1 odd image and 1 truncated file to {out}"
  )


if __name__ == "__main__":
  app.run(main)
