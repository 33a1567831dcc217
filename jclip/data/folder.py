"""Image-caption folders (the Flickr layout) as TFDS datasets in array_record format, read with no
TensorFlow.

A folder holds

    images/<name>.jpg
    captions.tsv    tab-separated, unquoted, with a header: image, caption_idx, caption, split
                    and optionally category (a class name per image)

`prepare(root, data_dir)` validates every row and every image once and writes one TFDS example per
image: {"image": the encoded image, "captions": its captions in caption_idx order, "label": the
class index (when there is a category column), "image_name"}. Any split name present in the table
becomes a TFDS split. `FolderSource` then reads a split by index, as the input pipeline needs.

Bad input stops the build with a `DataError` naming the file, the row and what to do; nothing is
silently dropped, and a failed build leaves nothing behind (see `prepare`). Images are stored
upright (EXIF orientation applied) as RGB; image names must stay inside images/.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jclip.data.images import ImageFileError, open_image
from jclip.errors import UserError
from jclip.slug import slug

REQUIRED_COLUMNS = ("image", "caption_idx", "caption", "split")
LABEL_COLUMN = "category"
CAPTIONS_FILE = "captions.tsv"
IMAGES_DIR = "images"
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels must be turned to stand upright


class DataError(UserError):
  """The data folder has a problem; the message names the file, row and fix."""


@dataclasses.dataclass
class CaptionedImage:
  name: str
  split: str
  captions: list[str]
  category: str | None


@dataclasses.dataclass
class CaptionTable:
  """The parsed captions.tsv: images in order of first appearance, and the class names."""

  images: list[CaptionedImage]
  class_names: list[str] | None  # sorted; None without a category column

  @property
  def splits(self) -> list[str]:
    return sorted({image.split for image in self.images})


def read_caption_table(root: str) -> CaptionTable:
  """Parses and checks `<root>/captions.tsv`; raises DataError naming the row of any problem."""
  if not os.path.isdir(root):
    raise DataError(
      f"Data folder {root!r} does not exist: pass the folder that holds "
      f"{IMAGES_DIR}/ and {CAPTIONS_FILE} (config.data.root or --data_root)."
    )
  path = os.path.join(root, CAPTIONS_FILE)
  if not os.path.isfile(path):
    raise DataError(
      f"{path} is missing: a data folder needs a {CAPTIONS_FILE} with columns "
      f"{', '.join(REQUIRED_COLUMNS)} (and optionally {LABEL_COLUMN})."
    )
  with open(path, "rb") as f:
    raw_lines = f.read().splitlines()
  if not raw_lines:
    raise DataError(f"{path} is empty: it needs a header row and one row per caption.")
  lines = []
  for row, raw in enumerate(raw_lines, start=1):
    try:
      lines.append(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise DataError(
        f"{path} row {row}: byte {raw[e.start : e.start + 1]!r} at column "
        f"{e.start + 1} is not UTF-8. Re-save the file as UTF-8."
      ) from None

  rows = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
  header = next(rows)
  missing = [c for c in REQUIRED_COLUMNS if c not in header]
  if missing:
    raise DataError(
      f"{path} row 1: the header {header} lacks column(s) {missing}; the columns "
      f"must include {list(REQUIRED_COLUMNS)} (tab-separated, unquoted)."
    )
  column = {name: header.index(name) for name in header}
  has_labels = LABEL_COLUMN in column

  by_name: dict[str, CaptionedImage] = {}
  caption_order: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
  for row, fields in enumerate(rows, start=2):
    if not fields:
      continue  # a blank line
    if len(fields) != len(header):
      raise DataError(
        f"{path} row {row}: {len(fields)} tab-separated fields, the header has "
        f"{len(header)}. Check for a stray tab or a missing field."
      )
    name, caption = fields[column["image"]].strip(), fields[column["caption"]].strip()
    split = fields[column["split"]].strip()
    category = fields[column[LABEL_COLUMN]].strip() if has_labels else None
    if not caption:
      raise DataError(
        f"{path} row {row}: the caption of {name!r} is empty. Write a caption or delete the row."
      )
    if not name or not split or (has_labels and not category):
      raise DataError(f"{path} row {row}: empty image, split or {LABEL_COLUMN} field.")
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
      raise DataError(
        f"{path} row {row}: image {name!r} points outside {IMAGES_DIR}/: name each "
        f"image by its path inside {IMAGES_DIR}/, without '..' or a leading '/'."
      )
    try:
      caption_idx = int(fields[column["caption_idx"]])
    except ValueError:
      raise DataError(
        f"{path} row {row}: caption_idx {fields[column['caption_idx']]!r} is not an integer."
      ) from None
    image = by_name.setdefault(name, CaptionedImage(name, split, [], category))
    if (image.split, image.category) != (split, category):
      raise DataError(
        f"{path} row {row}: {name!r} was listed earlier with split "
        f"{image.split!r} / {LABEL_COLUMN} {image.category!r}, here with {split!r} / "
        f"{category!r}. An image belongs to one split and one class."
      )
    caption_order[name].append((caption_idx, caption))

  if not by_name:
    raise DataError(f"{path} has a header but no captions.")
  for name, image in by_name.items():
    image.captions = [caption for _, caption in sorted(caption_order[name])]
  class_names = sorted({i.category for i in by_name.values()}) if has_labels else None
  return CaptionTable(list(by_name.values()), class_names)


def read_image_bytes(root: str, name: str) -> bytes:
  """The image's file, checked to decode completely; re-encoded as an upright RGB JPEG when it is
  not one already (greyscale, RGBA, CMYK, palette, PNG, or an EXIF orientation to apply), so every
  stored image is RGB and the right way up."""
  path = os.path.join(root, IMAGES_DIR, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DataError(f"{path} is listed in {CAPTIONS_FILE} but does not exist.") from None
  try:
    image = open_image(io.BytesIO(data), path)
  except ImageFileError as e:
    raise DataError(f"{e} Replace it, or remove its rows from {CAPTIONS_FILE}.") from None
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


def _dataset_name(root: str, table: CaptionTable) -> str:
  """A TFDS config name unique to the folder's path, its captions and its image files (each one's
  name, size and modification time): a changed table or a replaced image rebuilds."""
  digest = hashlib.sha256(os.path.abspath(root).encode() + b"\0")
  with open(os.path.join(root, CAPTIONS_FILE), "rb") as f:
    digest.update(f.read())
  for image in table.images:
    try:
      stat = os.stat(os.path.join(root, IMAGES_DIR, image.name))
      digest.update(f"\0{image.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    except FileNotFoundError:
      digest.update(f"\0{image.name}\0missing".encode())  # the build names it
  name = slug(os.path.basename(os.path.abspath(root)), default="data")
  return f"{name}_{digest.hexdigest()[:12]}"


class _TfdsNotices(logging.Filter):
  """Drops two TFDS warnings that say nothing to a jclip user: every folder is a "custom data
  configuration" by design, and PIL, not OpenCV, is what jclip decodes with."""

  NOTICES = ("Using custom data configuration", "OpenCV is not installed")

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.NOTICES)


logging.getLogger("absl").addFilter(_TfdsNotices())


class ImageCaptionFolder(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for one image-caption folder (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")

  # TFDS announces a download of "Unknown size" and its end; here nothing is downloaded.
  def _log_download_bytes(self) -> None:
    print(
      f"Converting {self._root} to a TFDS dataset in {self.data_dir} (once; later runs reuse it)."
    )

  def _log_download_done(self) -> None:
    print(f"Converted {self._root}.")

  def __init__(self, root: str, **kwargs):
    self._root = root
    self._table = read_caption_table(root)
    super().__init__(
      config=tfds.core.BuilderConfig(name=_dataset_name(root, self._table)), **kwargs
    )

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "image_name": tfds.features.Text(),
    }
    if self._table.class_names is not None:
      features["label"] = tfds.features.ClassLabel(names=self._table.class_names)
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(features),
      description=f"Image-caption folder {os.path.abspath(self._root)}",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data is local: nothing to download
    return {split: self._generate_examples(split) for split in self._table.splits}

  def _generate_examples(self, split: str):
    for image in self._table.images:
      if image.split != split:
        continue
      example = {
        "image": read_image_bytes(self._root, image.name),
        "captions": image.captions,
        "image_name": image.name,
      }
      if image.category is not None:
        example["label"] = image.category
      yield image.name, example


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "jclip", "tfds")


def prepare(root: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds the folder's TFDS dataset once (later calls reuse it) and returns its builder. A
  failed build leaves nothing behind: TFDS writes into a temporary folder, and the empty folders
  it made around it are removed here."""
  data_dir = data_dir or default_data_dir()
  existing = _folders(data_dir)
  try:
    builder = ImageCaptionFolder(root, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
  except BaseException:
    for folder in sorted(_folders(data_dir) - existing, reverse=True):  # children first
      if not os.listdir(folder):
        os.rmdir(folder)
    raise
  return builder


def _folders(top: str) -> set[str]:
  """`top` and every folder under it (an empty set if it does not exist)."""
  return {path for path, _, _ in os.walk(top)}


class FolderSource:
  """A split of a prepared folder as a random-access source (see jclip.data)."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    available = sorted(builder.info.splits)
    if split not in available:
      raise DataError(f"Split {split!r} is not in {builder.info.description}: it has {available}.")
    self.split = split
    # The dataset's name holds a digest of the folder's path, captions.tsv and image files.
    self.fingerprint = f"{builder.info.full_name}/{split}"
    self._examples = builder.as_data_source(split)
    # The same records without decoding images: cheap access to captions and labels.
    self._metadata = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    features = builder.info.features
    self.class_names = list(features["label"].names) if "label" in features.keys() else None

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    record = self._examples[index]
    example = {"image": record["image"], "captions": [c.decode() for c in record["captions"]]}
    if "label" in record:
      example["label"] = int(record["label"])
    return example

  def captions(self, index: int) -> list[str]:
    return [c.decode() for c in self._metadata[index]["captions"]]

  def image_name(self, index: int) -> str:
    """The image's file, as captions.tsv names it (a path inside images/)."""
    return self._metadata[index]["image_name"].decode()

  def labels(self) -> np.ndarray:
    """The class index of every example, in order."""
    if self.class_names is None:
      raise DataError(f"The {self.split} split has no {LABEL_COLUMN!r} column, so no class labels.")
    return np.array([int(self._metadata[i]["label"]) for i in range(len(self))])

  def __repr__(self) -> str:
    return f"FolderSource(split={self.split!r}, {len(self)} images)"
