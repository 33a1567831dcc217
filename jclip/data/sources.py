"""Picks the data source and the tokenizer named by a config.

Two kinds of tokenizer, chosen by config.tokenizer.kind:
  sentencepiece  trained on the training captions (vocabulary size in the config)
  wordpiece      the vocabulary of the pretrained text tower named by config.init.text_pretrained:
                 its embedding table only understands the ids of that vocabulary
Either is stored in every checkpoint as bytes and read back by `tokenizer_from_bytes`.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import ml_collections

from jclip.data import folder
from jclip.data.synthetic import CaptionedShapes
from jclip.data.tokenizer import SentencePieceTokenizer, Tokenizer
from jclip.data.wordpiece import WordPieceTokenizer
from jclip.models.pretrained import hf_text_folder, load_hf_tokenizer

DATASETS = ("synthetic_shapes", "folder")
TOKENIZERS = {"sentencepiece": SentencePieceTokenizer, "wordpiece": WordPieceTokenizer}
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


def make_tokenizer(config: ml_collections.ConfigDict, train_source) -> Tokenizer:
  """A new tokenizer for `config`: sentencepiece trained on (up to MAX_TOKENIZER_CAPTIONS of) the
  training split's captions, or the WordPiece vocabulary of the pretrained text tower."""
  tokenizer_config = config.tokenizer
  if tokenizer_config.kind == "wordpiece":
    return load_hf_tokenizer(hf_text_folder(config.init.text_pretrained))
  if tokenizer_config.kind != "sentencepiece":
    raise ValueError(f"config.tokenizer.kind={tokenizer_config.kind!r} is unknown: choose one of "
                     f"{sorted(TOKENIZERS)}.")
  captions = itertools.islice(
      (c for i in range(len(train_source)) for c in train_source.captions(i)),
      MAX_TOKENIZER_CAPTIONS)
  return SentencePieceTokenizer.train(captions, tokenizer_config.vocab_size,
                                      tokenizer_config.model_type)


def tokenizer_from_bytes(tokenizer_config: ml_collections.ConfigDict, data: bytes) -> Tokenizer:
  """The tokenizer that a checkpoint stored (see Checkpoints.tokenizer_bytes)."""
  return TOKENIZERS[tokenizer_config.kind](data)
