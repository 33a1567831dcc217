"""Tokenizers: text -> fixed-length int32 token ids, PAD_ID (0) for padding.

A sentencepiece model is trained on the training captions and stored with every checkpoint as its
serialised bytes, so a checkpoint carries the exact tokenizer that its text tower was trained with.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import sentencepiece as spm

from jclip.errors import UserError

# The padding id every jclip tokenizer uses: the text towers mask it out (jclip.models.text.PAD_ID,
# which a test keeps equal to this one).
PAD_ID = 0
UNK_ID = 1


class Tokenizer(Protocol):
  """What the pipeline, the checkpoints and evaluation need of a tokenizer (sentencepiece here,
  WordPiece in jclip/data/wordpiece.py)."""

  vocab_size: int

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids [len(texts), max_len], padded with PAD_ID."""

  def to_bytes(self) -> bytes:
    """The serialised tokenizer; the class's constructor takes it back."""


class SentencePieceTokenizer:
  """Wraps a sentencepiece model whose id 0 is padding and id 1 is unknown (no BOS/EOS)."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    if self._sp.pad_id() != PAD_ID:
      raise UserError(
        f"This sentencepiece model pads with id {self._sp.pad_id()}; jclip's text "
        f"towers need padding id {PAD_ID}. Train it with SentencePieceTokenizer.train."
      )

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram"):
    """Trains on `texts` (deterministic for the same texts). The vocabulary may come out smaller
    than `vocab_size` on a tiny corpus (hard_vocab_limit=False) but never larger."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      hard_vocab_limit=False,
      pad_id=PAD_ID,
      unk_id=UNK_ID,
      bos_id=-1,
      eos_id=-1,
      normalization_rule_name="nmt_nfkc_cf",
      character_coverage=1.0,
      num_threads=1,
      minloglevel=2,
    )
    return cls(model.getvalue())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def to_bytes(self) -> bytes:
    return self._proto

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids [len(texts), max_len]: truncated to max_len, padded with 0."""
    tokens_NL = np.full((len(texts), max_len), PAD_ID, np.int32)
    for row, ids in enumerate(self._sp.encode(list(texts))):
      ids = ids[:max_len]
      tokens_NL[row, : len(ids)] = ids
    return tokens_NL

  def pieces(self, text: str) -> list[str]:
    """The sub-word pieces of `text` (for inspection and teaching)."""
    return self._sp.encode(text, out_type=str)
