"""A bank of labelled images to evaluate a model on: a folder of class subfolders, or a table.

    root/<class>/...       every image under a class's folder (its subfolders too)
    images.csv | .tsv      a table with a header (jclip/data/tables.py): a column of image paths
                           (relative to the table's folder, or absolute), a column of class labels,
                           optionally one of captions; every other column is kept as the image's
                           metadata (a stimulus set's ratings, say)

    bank = read_labelled_images(path, image_column="image", label_column="label")
    bank[i]        {"image": uint8 [H, W, 3], "label": class index}    (decoded on each access)
    bank.paths[i], bank.metadata[i], bank.captions(i), bank.labels(), bank.class_names

The bank is a random-access source, as evaluation reads a split (EvalSplit in
jclip/evaluation/embedding.py); `split` is its name (the folder's or the table's, as a slug),
which names its result files.

Every image is decoded once when the bank is read (jclip.data.images.open_image). One that cannot be
used (unreadable, truncated, not an image, a possible decompression bomb), and any file of a class
folder that is not an image by its extension or lies outside a class folder, is left out and
listed in `bank.skipped` with the reason: nothing is dropped without a word. What needs the user's
hand raises a UserError naming the file or row: no image at all, a missing column or file, an
image listed twice, an empty label, a label outside `class_names`.

The classes are the class folders' names or the labels' values, sorted, unless `class_names` gives
them (and their order). Each image's `content_digest` (jclip.data.images) tells whether a run
trained on the same file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from jclip.data.images import (
  IMAGE_EXTENSIONS,
  ImageFileError,
  content_digest,
  list_image_files,
  open_image,
  upright_jpeg_bytes,
)
from jclip.data.tables import read_table
from jclip.errors import UserError
from jclip.slug import slug

# The columns of a table, unless named otherwise (eval.py's --image_column and --label_column).
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"


@dataclasses.dataclass(frozen=True)
class _Listed:
  """An image as its folder or table lists it, before it is decoded."""

  where: str  # what messages call it: its path, or "<table> row <n>"
  path: str
  label: str
  caption: str | None = None
  metadata: dict[str, str] = dataclasses.field(default_factory=dict)


class LabelledImages:
  """A bank of labelled images (see the module docstring); made by `read_labelled_images`."""

  def __init__(
    self,
    name: str,
    listed: Sequence[_Listed],
    class_names: Sequence[str],
    digests: Sequence[str],
    skipped: Sequence[tuple[str, str]],
  ):
    self.split = name
    self.class_names = list(class_names)
    self.paths = [image.path for image in listed]
    self.metadata = [image.metadata for image in listed]
    self._captions = [[] if image.caption is None else [image.caption] for image in listed]
    index_of = {name: index for index, name in enumerate(self.class_names)}
    self._labels_N = np.array([index_of[image.label] for image in listed], np.int64)
    self._digests = list(digests)
    self.skipped = list(skipped)  # (path, why it was left out)
    # What the feature cache keys a locked backbone's features of these images by.
    self.fingerprint = "labelled/" + hashlib.sha256("".join(digests).encode()).hexdigest()[:20]

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    image_HW3 = np.asarray(open_image(self.paths[index]))
    return {
      "image": image_HW3,
      "captions": self.captions(index),
      "label": int(self._labels_N[index]),
    }

  def captions(self, index: int) -> list[str]:
    """The image's caption from the table's caption column, or none."""
    return self._captions[index]

  def labels(self) -> np.ndarray:
    """The class index of every image [N]."""
    return self._labels_N

  def content_digests(self) -> list[str]:
    """Every image's jclip.data.images.content_digest, in order."""
    return self._digests

  def __repr__(self) -> str:
    return f"LabelledImages({self.split!r}, {len(self)} images, {len(self.class_names)} classes)"


def _from_class_folders(root: str) -> tuple[list[_Listed], list[tuple[str, str]]]:
  """Each image under root/<class>/, and the files left out (not an image by its extension, or not
  in a class folder)."""
  listed, skipped = [], []
  images = set(list_image_files(root))  # a UserError if there is none at all
  for parent, subfolders, files in os.walk(root):
    subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
    for name in sorted(files):
      relative = os.path.relpath(os.path.join(parent, name), root)
      path = os.path.join(root, relative)
      if name.startswith("."):
        continue  # .DS_Store and the like
      if relative not in images:
        skipped.append((path, f"not an image file ({', '.join(IMAGE_EXTENSIONS)})"))
      elif os.sep not in relative:
        skipped.append((path, "not in a class folder"))
      else:
        listed.append(_Listed(path, path, relative.split(os.sep)[0]))
  if not listed:
    raise UserError(
      f"{root} has no class folders with images: put the images of each class in a folder "
      f"named after it, {root}/<class>/, or give a .csv/.tsv table of images and labels."
    )
  return listed, skipped


def _from_table(
  path: str, image_column: str, label_column: str, caption_column: str | None
) -> list[_Listed]:
  """Each row of the table as an image, checked: labels present, files present, none twice."""
  required = {image_column: "--image_column", label_column: "--label_column"}
  if caption_column:
    required[caption_column] = "--caption_column"
  table = read_table(path, required)
  if not table.rows:
    raise UserError(f"{path} has a header but no rows: list one image per row.")
  folder = os.path.dirname(os.path.abspath(path))
  listed, first_row, missing = [], {}, []
  for row, fields in table.rows:
    where, name = f"{path} row {row}", fields[image_column].strip()
    label = fields[label_column].strip()
    if not name or not label:
      raise UserError(f"{where}: empty {image_column} or {label_column} field.")
    image_path = os.path.normpath(os.path.join(folder, name))  # an absolute name stays itself
    if image_path in first_row:
      raise UserError(
        f"{where} lists {name!r} again (first at row {first_row[image_path]}): list each image "
        "once."
      )
    first_row[image_path] = row
    if not os.path.isfile(image_path):
      missing.append(f"row {row}: {image_path}")
    caption = (fields[caption_column].strip() or None) if caption_column else None
    metadata = {column: value for column, value in fields.items() if column not in required}
    listed.append(_Listed(where, image_path, label, caption, metadata))
  if missing:
    raise UserError(
      f"{path} names {len(missing)} file(s) that do not exist, first {missing[0]} (image paths "
      "are relative to the table's folder)."
    )
  return listed


def _classes(listed: Sequence[_Listed], class_names: Sequence[str] | None) -> list[str]:
  """The class list: `class_names`, every label checked to be one of them; or the labels, sorted."""
  if class_names is None:
    return sorted({image.label for image in listed})
  outside = [image for image in listed if image.label not in class_names]
  if outside:
    first = outside[0]
    close = difflib.get_close_matches(first.label, class_names, n=1)
    raise UserError(
      f"{first.where}: label {first.label!r} is not one of the classes {list(class_names)}"
      + (f" (did you mean {close[0]!r}?)" if close else "")
      + f"; {len(outside)} image(s) have a label outside the list."
    )
  return list(class_names)


def _decoded(listed: Sequence[_Listed]):
  """(the images that decode, their content digests, (path, reason) of those that do not)."""
  kept, digests, skipped = [], [], []
  for image in tqdm(listed, desc="reading images", unit="image", leave=False, disable=None):
    with open(image.path, "rb") as f:
      data = f.read()
    try:
      digests.append(content_digest(upright_jpeg_bytes(data, image.path)))
    except ImageFileError as e:
      skipped.append((image.path, str(e)))
      continue
    kept.append(image)
  return kept, digests, skipped


def read_labelled_images(
  path: str | os.PathLike,
  image_column: str = IMAGE_COLUMN,
  label_column: str = LABEL_COLUMN,
  caption_column: str | None = None,
  class_names: Sequence[str] | None = None,
) -> LabelledImages:
  """The bank at `path`: a folder of class folders, or a .csv/.tsv table whose columns
  `image_column`, `label_column` and (if given) `caption_column` hold each image's path, class and
  caption. `class_names`: the classes and their order (default: the labels found, sorted)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    listed, skipped = _from_class_folders(path)
  elif os.path.isfile(path):
    listed, skipped = _from_table(path, image_column, label_column, caption_column), []
  else:
    raise UserError(
      f"{path} does not exist: give a folder of class folders (<folder>/<class>/<image>) or a "
      ".csv/.tsv table of images and labels."
    )
  classes = _classes(listed, class_names)
  kept, digests, unreadable = _decoded(listed)
  if not kept:
    raise UserError(
      f"None of the {len(listed)} images of {path} can be read; the first: {unreadable[0][1]}"
    )
  name = slug(os.path.splitext(os.path.basename(os.path.normpath(path)))[0], default="images")
  return LabelledImages(name, kept, classes, digests, skipped + unreadable)
