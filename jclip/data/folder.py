"""Image-caption folders (the Flickr layout) as TFDS datasets in array_record format, read with no
TensorFlow.

A folder holds

    images/<name>.jpg
    captions.tsv    a table with a header (jclip/data/tables.py): tab-separated and unquoted
                    (.tsv) or comma-separated and quoted (.csv), one row per caption, with columns
                    image      the image's path inside images/
                    caption
                    split      the split of the image ("train", "val", ...)
                    caption_idx  (optional) the caption's place among its image's; without it,
                               the order of the rows
                    category   (optional) a class name per image
                    and any others, which are ignored

The file's name and the names of its columns are settings (TableLayout, from config.data's
captions_file and *_column fields): `--config.data.captions_file=pairs.csv
--config.data.caption_column=text` reads a CSV whose captions are in a column "text".

`prepare(root, data_dir, layout)` validates every row and every image once and writes one TFDS
example per image: {"image": the encoded image, "captions": its captions in caption order,
"label": the class index (when there is a category column), "image_name"}. Any split name present
in the table becomes a TFDS split. `FolderSource` then reads a split by index, as the input
pipeline needs.

Bad input stops the build with a `DataError` naming the file, the row and what to do; nothing is
silently dropped, and a failed build leaves nothing behind (see `prepare`). Images are stored
upright (EXIF orientation applied) as RGB JPEGs (jclip.data.images.upright_jpeg_bytes); image
names must stay inside images/.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from jclip.data.images import ImageFileError, content_digest, upright_jpeg_bytes
from jclip.data.tables import DataError, read_table
from jclip.slug import slug

IMAGES_DIR = "images"


@dataclasses.dataclass(frozen=True)
class TableLayout:
  """The captions file of a folder and the names of its columns (config.data's fields of the same
  names; see the module docstring)."""

  captions_file: str
  image_column: str
  caption_column: str
  caption_index_column: str  # optional in the file: absent, the captions keep the rows' order
  split_column: str
  label_column: str  # optional in the file: absent, the images have no class

  @classmethod
  def of(cls, data) -> TableLayout:
    """The layout that a config's `data` section names."""
    return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


# The one layout that jclip read before the columns could be chosen. A folder read with it keeps
# the dataset name it had then (the layout is left out of the name's digest), so its built dataset
# and the features cached from it are found again instead of being computed anew.
FLICKR_LAYOUT = TableLayout("captions.tsv", "image", "caption", "caption_idx", "split", "category")


@dataclasses.dataclass
class CaptionedImage:
  name: str
  split: str
  captions: list[str]
  category: str | None


@dataclasses.dataclass
class CaptionTable:
  """The parsed captions file: images in order of first appearance, and the class names."""

  images: list[CaptionedImage]
  class_names: list[str] | None  # sorted; None without a category column

  @property
  def splits(self) -> list[str]:
    return sorted({image.split for image in self.images})


def read_caption_table(root: str, layout: TableLayout) -> CaptionTable:
  """Parses and checks the folder's captions file; raises DataError naming the row of any
  problem."""
  if not os.path.isdir(root):
    raise DataError(
      f"Data folder {root!r} does not exist: pass the folder that holds "
      f"{IMAGES_DIR}/ and {layout.captions_file} (config.data.root or --data_root)."
    )
  path = os.path.join(root, layout.captions_file)
  if not os.path.isfile(path):
    raise DataError(
      f"{path} is missing: a data folder needs {IMAGES_DIR}/ and a table of captions "
      f"(config.data.captions_file) with columns {layout.image_column}, "
      f"{layout.caption_column}, {layout.split_column} (and optionally "
      f"{layout.caption_index_column}, {layout.label_column})."
    )
  table = read_table(
    path,
    {
      layout.image_column: "--config.data.image_column",
      layout.caption_column: "--config.data.caption_column",
      layout.split_column: "--config.data.split_column",
    },
  )
  has_labels = layout.label_column in table.header
  has_index = layout.caption_index_column in table.header

  by_name: dict[str, CaptionedImage] = {}
  caption_order: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
  for row, fields in table.rows:
    name, caption = fields[layout.image_column].strip(), fields[layout.caption_column].strip()
    split = fields[layout.split_column].strip()
    category = fields[layout.label_column].strip() if has_labels else None
    if not caption:
      raise DataError(
        f"{path} row {row}: the caption of {name!r} is empty. Write a caption or delete the row."
      )
    if not name or not split or (has_labels and not category):
      raise DataError(
        f"{path} row {row}: empty {layout.image_column}, {layout.split_column} or "
        f"{layout.label_column} field."
      )
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
      raise DataError(
        f"{path} row {row}: image {name!r} points outside {IMAGES_DIR}/: name each "
        f"image by its path inside {IMAGES_DIR}/, without '..' or a leading '/'."
      )
    caption_idx = row  # without the column, the rows' order
    if has_index:
      try:
        caption_idx = int(fields[layout.caption_index_column])
      except ValueError:
        raise DataError(
          f"{path} row {row}: {layout.caption_index_column} "
          f"{fields[layout.caption_index_column]!r} is not an integer."
        ) from None
    image = by_name.setdefault(name, CaptionedImage(name, split, [], category))
    if (image.split, image.category) != (split, category):
      raise DataError(
        f"{path} row {row}: {name!r} was listed earlier with {layout.split_column} "
        f"{image.split!r} / {layout.label_column} {image.category!r}, here with {split!r} / "
        f"{category!r}. An image belongs to one split and one class."
      )
    caption_order[name].append((caption_idx, caption))

  if not by_name:
    raise DataError(f"{path} has a header but no captions.")
  for name, image in by_name.items():
    image.captions = [caption for _, caption in sorted(caption_order[name])]
  class_names = sorted({i.category for i in by_name.values()}) if has_labels else None
  return CaptionTable(list(by_name.values()), class_names)


def read_image_bytes(root: str, name: str, captions_file: str) -> bytes:
  """What the dataset stores of image `name` of the folder: its upright_jpeg_bytes."""
  path = os.path.join(root, IMAGES_DIR, name)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DataError(f"{path} is listed in {captions_file} but does not exist.") from None
  try:
    return upright_jpeg_bytes(data, path)
  except ImageFileError as e:
    raise DataError(f"{e} Replace it, or remove its rows from {captions_file}.") from None


def _dataset_name(root: str, table: CaptionTable, layout: TableLayout) -> str:
  """A TFDS config name unique to the folder's path, its captions file and the columns read from
  it, and its image files (each one's name, size and modification time): a changed table, another
  column or a replaced image rebuilds."""
  digest = hashlib.sha256(os.path.abspath(root).encode() + b"\0")
  with open(os.path.join(root, layout.captions_file), "rb") as f:
    digest.update(f.read())
  if layout != FLICKR_LAYOUT:
    digest.update(json.dumps(dataclasses.asdict(layout), sort_keys=True).encode())
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

  def __init__(self, root: str, layout: TableLayout, **kwargs):
    self._root, self._layout = root, layout
    self._table = read_caption_table(root, layout)
    super().__init__(
      config=tfds.core.BuilderConfig(name=_dataset_name(root, self._table, layout)), **kwargs
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
        "image": read_image_bytes(self._root, image.name, self._layout.captions_file),
        "captions": image.captions,
        "image_name": image.name,
      }
      if image.category is not None:
        example["label"] = image.category
      yield image.name, example


def default_data_dir() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "jclip", "tfds")


def prepare(root: str, data_dir: str | None, layout: TableLayout) -> tfds.core.DatasetBuilder:
  """Builds the TFDS dataset of the folder `root` read with `layout` once, under `data_dir`
  (None: default_data_dir()); later calls reuse it. Returns its builder. A failed build leaves
  nothing behind: TFDS writes into a temporary folder, and the empty folders it made around it
  are removed here."""
  data_dir = data_dir or default_data_dir()
  existing = _folders(data_dir)
  try:
    builder = ImageCaptionFolder(root, layout, data_dir=data_dir, file_format="array_record")
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
    # The dataset's name holds a digest of the folder's path, captions file, columns and images.
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
      raise DataError(f"The {self.split} split has no class labels (no category column).")
    return np.array([int(self._metadata[i]["label"]) for i in range(len(self))])

  def content_digests(self) -> list[str]:
    """The content digest of every image, in order (jclip.data.images.content_digest of its
    stored bytes, read without decoding)."""
    return [content_digest(self._metadata[i]["image"]) for i in range(len(self))]

  def __repr__(self) -> str:
    return f"FolderSource(split={self.split!r}, {len(self)} images)"
