"""Picks the data source named by a config: the synthetic shapes or an image-caption folder."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from jclip.data import folder
from jclip.data.synthetic import CaptionedShapes
from jclip.errors import UserError

DATASETS = ("synthetic_shapes", "folder")


def make_source(data: ml_collections.ConfigDict, split: str) -> Sequence[dict]:
  """The random-access source of `split` for `config.data`."""
  if data.name == "synthetic_shapes":
    num = {"train": data.num_train, "val": data.num_val}.get(split)
    if num is None:
      raise UserError(f"The synthetic shapes have splits 'train' and 'val', not {split!r}.")
    return CaptionedShapes(split, num, image_size=data.image_size, seed=data.seed)
  if data.name == "folder":
    if not data.root:
      raise UserError(
        "config.data.root is not set: pass the image-caption folder, e.g. "
        "--config.data.root=/path/to/flickr8k (see BUILD.md, 'Data')."
      )
    builder = folder.prepare(data.root, data.tfds_dir, folder.TableLayout.of(data))
    return folder.FolderSource(builder, split)
  raise UserError(f"config.data.name={data.name!r} is unknown: choose one of {DATASETS}.")


class CachedFeatureSource(Sequence):
  """A source whose examples carry precomputed features of locked towers (jclip/runs/
  feature_cache.py) in place of what those towers read: {"image_features": float32 [V, F], one row
  per view of the image, instead of "image"; "text_features": float32 [K, F'], one row per caption,
  instead of "captions"; "label"}. What is cached is never decoded.

  Args:
    source: the split (random access, with `captions(i)`).
    image_features_NVF: the image features, or None to keep the images.
    text_features_MF: every caption's features, image by image in caption order, or None to
      keep the caption texts.
  """

  def __init__(
    self,
    source,
    image_features_NVF: np.ndarray | None = None,
    text_features_MF: np.ndarray | None = None,
  ):
    if image_features_NVF is not None and len(image_features_NVF) != len(source):
      raise UserError(
        f"{len(image_features_NVF)} image feature rows for a source of {len(source)} images."
      )
    self._source, self._images = source, image_features_NVF
    self._captions = text_features_MF
    if text_features_MF is not None:
      counts = [len(source.captions(i)) for i in range(len(source))]
      if sum(counts) != len(text_features_MF):
        raise UserError(
          f"{len(text_features_MF)} caption feature rows for the "
          f"{sum(counts)} captions of the source."
        )
      self._caption_starts = np.concatenate([[0], np.cumsum(counts)])
    self.class_names = class_names_of(source)
    self._labels = labels_of(source)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    if self._images is None:
      example = dict(self._source[index])
    else:
      example = {"image_features": self._images[index], "captions": self._source.captions(index)}
    if self._captions is not None:
      start, end = self._caption_starts[index], self._caption_starts[index + 1]
      example["text_features"] = self._captions[start:end]
      del example["captions"]
    if self._labels is not None:
      example["label"] = int(self._labels[index])
    return example


def first_examples(source, count: int):
  """The first `count` examples of a source: the source itself when it has no more (so that what
  is cached of it, its features, is found again), else a FirstExamples."""
  return source if len(source) <= count else FirstExamples(source, count)


class FirstExamples(Sequence):
  """The first `count` examples of a source, without their classes: a bank of queries for
  retrieval (jclip.evaluation.retrieval.QuerybankNorm) needs neither a whole 50,000-image split
  nor labels."""

  def __init__(self, source, count: int):
    self._source, self._count = source, count
    self.split = f"{source.split}[:{self._count}]"
    fingerprint = getattr(source, "fingerprint", None)
    self.fingerprint = None if fingerprint is None else f"{fingerprint}[:{self._count}]"

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._count:
      raise IndexError(f"Index {index} out of range for {self._count} examples.")
    return {key: value for key, value in self._source[index].items() if key != "label"}

  def captions(self, index: int) -> list[str]:
    return self._source.captions(index)


def check_classes(source, num_classes: int, task: str) -> None:
  """A classifier needs one class per label: fail before training, not in the loss."""
  class_names = class_names_of(source)
  if class_names is None:
    raise UserError(
      f"config.task={task!r} needs class labels, but the training data has none: a "
      "data folder needs a 'category' column in captions.tsv."
    )
  if len(class_names) != num_classes:
    raise UserError(
      f"The training data has {len(class_names)} classes {class_names} but "
      f"config.model.num_classes={num_classes}: set --config.model.num_classes="
      f"{len(class_names)}."
    )


def image_name(source, index: int) -> str:
  """What listings call an image of a source: its file (a folder's images/<name>), or
  "<split> image <index>" where it has none (the synthetic shapes)."""
  name_of = getattr(source, "image_name", None)
  return name_of(index) if name_of else f"{source.split} image {index}"


def class_names_of(source) -> list[str] | None:
  """The class names of a source (an example's "label" indexes them), or None if its examples have
  no class: a folder without a category column, or a plain list of examples."""
  names = getattr(source, "class_names", None)
  return None if names is None else list(names)


def labels_of(source) -> np.ndarray | None:
  """The class index of every example [N], or None if the source has no classes."""
  if class_names_of(source) is None:
    return None
  if hasattr(source, "labels"):
    return source.labels()  # a folder reads them without decoding images
  return np.array([source[index]["label"] for index in range(len(source))])
