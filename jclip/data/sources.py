"""Picks the data source and trains the tokenizer named by a config."""

from __future__ import annotations

import itertools
from typing import Sequence

import ml_collections

from jclip.data import folder
from jclip.data.synthetic import CaptionedShapes
from jclip.data.tokenizer import SentencePieceTokenizer

DATASETS = ("synthetic_shapes", "folder")
MAX_TOKENIZER_CAPTIONS = 200_000  # more captions than this add little to a sentencepiece vocabulary


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


def train_tokenizer(tokenizer_config: ml_collections.ConfigDict, train_source) -> SentencePieceTokenizer:
  """Trains the tokenizer on (up to MAX_TOKENIZER_CAPTIONS of) the training split's captions."""
  if tokenizer_config.kind != "sentencepiece":
    raise ValueError(f"config.tokenizer.kind={tokenizer_config.kind!r} is unknown: use "
                     "'sentencepiece'.")
  captions = itertools.islice(
      (c for i in range(len(train_source)) for c in train_source.captions(i)),
      MAX_TOKENIZER_CAPTIONS)
  return SentencePieceTokenizer.train(captions, tokenizer_config.vocab_size,
                                      tokenizer_config.model_type)
