"""A run's tokenizer: made from the config when a run starts, read back from its checkpoints after.

Two kinds, chosen by config.tokenizer.kind:
  sentencepiece  trained on the training captions (vocabulary size in the config)
  wordpiece      the vocabulary of the pretrained text tower named by config.init.text_pretrained:
                 its embedding table only understands the ids of that vocabulary
Either is stored in every checkpoint as bytes (`Tokenizer.to_bytes`), so a checkpoint carries the
exact tokenizer its text tower was trained with.
"""

from __future__ import annotations

import itertools

import ml_collections

from jclip.data.tokenizer import SentencePieceTokenizer, Tokenizer
from jclip.data.wordpiece import WordPieceTokenizer
from jclip.errors import UserError
from jclip.models.pretrained import hf_text_folder
from jclip.runs.checkpoint import Checkpoints
from jclip.runs.metrics import say

TOKENIZERS = {"sentencepiece": SentencePieceTokenizer, "wordpiece": WordPieceTokenizer}
MAX_TOKENIZER_CAPTIONS = 200_000  # more captions than this add little to a sentencepiece vocabulary


def make_tokenizer(config: ml_collections.ConfigDict, train_source) -> Tokenizer:
  """A new tokenizer for `config`: sentencepiece trained on (up to MAX_TOKENIZER_CAPTIONS of) the
  training split's captions, or the WordPiece vocabulary of the pretrained text tower."""
  tokenizer_config = config.tokenizer
  if tokenizer_config.kind == "wordpiece":
    return WordPieceTokenizer.from_hf_folder(hf_text_folder(config.init.text_pretrained))
  if tokenizer_config.kind != "sentencepiece":
    raise UserError(
      f"config.tokenizer.kind={tokenizer_config.kind!r} is unknown: choose one of "
      f"{sorted(TOKENIZERS)}."
    )
  captions = itertools.islice(
    (c for i in range(len(train_source)) for c in train_source.captions(i)), MAX_TOKENIZER_CAPTIONS
  )
  return SentencePieceTokenizer.train(
    captions, tokenizer_config.vocab_size, tokenizer_config.model_type
  )


def new_run_tokenizer(config: ml_collections.ConfigDict, train_source) -> Tokenizer:
  """The tokenizer of a new run: a CLIP started from a text classifier keeps that classifier's
  tokenizer (its embedding rows mean those pieces); otherwise `make_tokenizer`'s."""
  workdir = config.init.text_classifier_workdir
  if workdir:
    say(f"Using the tokenizer of the text classifier in {workdir}.")
    return tokenizer_from_bytes(
      config.tokenizer, Checkpoints(workdir, create=False).tokenizer_bytes()
    )
  tokenizer = make_tokenizer(config, train_source)
  say(f"Tokenizer: {config.tokenizer.kind}, {tokenizer.vocab_size} pieces.")
  return tokenizer


def tokenizer_from_bytes(tokenizer_config: ml_collections.ConfigDict, data: bytes) -> Tokenizer:
  """The tokenizer that a checkpoint stored (see Checkpoints.tokenizer_bytes)."""
  return TOKENIZERS[tokenizer_config.kind](data)
