"""Picks the data source named by a config: the synthetic shapes or an image-caption folder."""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from jclip.data import folder
from jclip.data.synthetic import CaptionedShapes

DATASETS = ("synthetic_shapes", "folder")


def make_source(data: ml_collections.ConfigDict, split: str) -> Sequence[dict]:
  """The random-access source of `split` for `config.data`."""
  if data.name == "synthetic_shapes":
    num = {"train": data.num_train, "val": data.num_val}.get(split)
    if num is None:
      raise ValueError(f"The synthetic shapes have splits 'train' and 'val', not {split!r}.")
    return CaptionedShapes(split, num, image_size=data.image_size, seed=data.get("seed", 0))
  if data.name == "folder":
    if not data.root:
      raise ValueError("config.data.root is not set: pass the image-caption folder, e.g. "
                       "--config.data.root=/path/to/flickr8k (see BUILD.md, 'Data').")
    return folder.FolderSource(folder.prepare(data.root, data.get("tfds_dir")), split)
  raise ValueError(f"config.data.name={data.name!r} is unknown: choose one of {DATASETS}.")


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
