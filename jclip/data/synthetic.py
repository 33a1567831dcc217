"""Captioned shapes: the embedded default dataset, generated from a seed with no files or download.

Each image shows one shape on a noisy background, drawn with four independent attributes:

    kind      circle, square, triangle, diamond, cross           (5)
    colour    red, green, blue, yellow, purple, orange, white    (7)
    size      small, large                                       (2)
    position  top left, top right, bottom left, bottom right, centre (5)

350 combinations. Each example carries five captions, one per phrasing template, so it has the
same shape as a Flickr example (an image and its five captions). Example i of a split is generated
from (seed, split, i) alone, so the dataset is the same on every machine and any example can be read
without generating the others. The validation split lists distinct attribute combinations (up to
350 of them), so every val caption has exactly one correct image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from jclip.errors import UserError

KINDS = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
  "red": (220, 40, 40),
  "green": (40, 190, 60),
  "blue": (50, 80, 230),
  "yellow": (235, 220, 50),
  "purple": (150, 60, 200),
  "orange": (245, 140, 30),
  "white": (240, 240, 240),
}
SIZES = {"small": 0.16, "large": 0.3}  # radius as a fraction of the image side
POSITIONS = {
  "top left": (0.28, 0.28),
  "top right": (0.28, 0.72),
  "bottom left": (0.72, 0.28),
  "bottom right": (0.72, 0.72),
  "centre": (0.5, 0.5),
}  # (row, column) of the centre, as fractions of the side
TEMPLATES = (
  "a {size} {colour} {kind} in the {position}",
  "there is a {colour} {kind} , {size} , at the {position} of the picture",
  "{position} : one {size} {kind} coloured {colour}",
  "a picture of a {kind} that is {colour} and {size} , {position}",
  "the {position} holds a {size} {colour} {kind}",
)
SPLIT_IDS = {"train": 0, "val": 1}
COMBINATIONS = tuple(itertools.product(KINDS, COLOURS, SIZES, POSITIONS))


def _shape_mask(kind: str, rows, cols, radius: float):
  """Boolean mask of `kind` for pixel offsets (rows, cols) from the centre, in pixels."""
  if kind == "circle":
    return rows**2 + cols**2 <= radius**2
  if kind == "square":
    return np.maximum(np.abs(rows), np.abs(cols)) <= radius * 0.85
  if kind == "diamond":
    return np.abs(rows) + np.abs(cols) <= radius * 1.2
  if kind == "cross":
    arm = radius * 0.35
    return ((np.abs(rows) <= arm) & (np.abs(cols) <= radius)) | (
      (np.abs(cols) <= arm) & (np.abs(rows) <= radius)
    )
  if kind == "triangle":  # apex up: below the apex, inside two slanted edges
    return (rows <= radius * 0.8) & (rows >= -radius) & (np.abs(cols) <= (rows + radius) * 0.6)
  raise ValueError(f"Unknown shape kind {kind!r}.")


def render(
  kind: str, colour: str, size: str, position: str, image_size: int, rng: np.random.Generator
) -> np.ndarray:
  """Draws one shape with small random jitter on a noisy dark background: uint8 [S, S, 3]."""
  side = image_size
  image = rng.normal(40, 12, size=(side, side, 3))
  centre_r, centre_c = POSITIONS[position]
  jitter = rng.uniform(-0.05, 0.05, size=2)
  radius = SIZES[size] * side * rng.uniform(0.9, 1.1)
  rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
  mask = _shape_mask(
    kind, rows - (centre_r + jitter[0]) * side, cols - (centre_c + jitter[1]) * side, radius
  )
  shade = np.asarray(COLOURS[colour]) * rng.uniform(0.85, 1.0)
  image[mask] = shade + rng.normal(0, 6, size=(int(mask.sum()), 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def captions_for(kind: str, colour: str, size: str, position: str) -> list[str]:
  return [t.format(kind=kind, colour=colour, size=size, position=position) for t in TEMPLATES]


class CaptionedShapes(Sequence):
  """A random-access source of captioned shapes (a grain `RandomAccessDataSource`). An example's
  "label" is its shape kind, an index into `class_names` (= KINDS).

  Args:
    split: "train" or "val".
    num_examples: how many examples the split has (val: at most 350, one per combination).
    image_size: side of the square images in pixels.
    seed: the dataset seed; the same seed gives the same dataset everywhere.
  """

  def __init__(self, split: str, num_examples: int, image_size: int = 32, seed: int = 0):
    if split not in SPLIT_IDS:
      raise UserError(
        f"Unknown split {split!r} for the synthetic shapes; use one of {sorted(SPLIT_IDS)}."
      )
    if split == "val" and num_examples > len(COMBINATIONS):
      raise UserError(
        f"The val split has at most {len(COMBINATIONS)} distinct combinations; "
        f"got data.num_val={num_examples}."
      )
    self.split, self.num_examples, self.image_size, self.seed = (
      split,
      num_examples,
      image_size,
      seed,
    )
    if split == "val":
      order = np.random.default_rng([seed, SPLIT_IDS[split]]).permutation(len(COMBINATIONS))
      self._val_combinations = order[:num_examples]

  class_names = list(KINDS)

  def __len__(self) -> int:
    return self.num_examples

  def attributes(self, index: int) -> tuple[str, str, str, str]:
    """(kind, colour, size, position) of example `index`."""
    if self.split == "val":
      return COMBINATIONS[self._val_combinations[index]]
    rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 0])
    return COMBINATIONS[rng.integers(len(COMBINATIONS))]

  @property
  def fingerprint(self) -> str:
    """Names this split's examples exactly (for caches of things computed from them)."""
    return f"synthetic:{self!r}"

  def captions(self, index: int) -> list[str]:
    """The captions of example `index`, without rendering its image."""
    return captions_for(*self.attributes(index))

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"Index {index} out of range for {self.num_examples} examples.")
    attributes = self.attributes(index)
    rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 1])
    return {
      "image": render(*attributes, image_size=self.image_size, rng=rng),
      "captions": self.captions(index),
      "label": KINDS.index(attributes[0]),
    }

  def __repr__(self) -> str:
    return (
      f"CaptionedShapes(split={self.split!r}, num_examples={self.num_examples}, "
      f"image_size={self.image_size}, seed={self.seed})"
    )
