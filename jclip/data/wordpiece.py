"""BERT's WordPiece tokenizer: text -> [CLS] pieces [SEP], padded with 0 (for pretrained towers).

A pretrained BERT or DistilBERT text tower only understands the ids of the vocabulary it was trained
with, so its tokenizer is built from that checkpoint's `vocab.txt` (one piece a line, the id is the
line number) rather than trained on our captions. The steps are BERT's own, done by Hugging Face's
`tokenizers` library:

    normalise    drop control characters, space out CJK characters, optionally lowercase and
                 strip accents ("uncased" checkpoints)
    pre-split    on whitespace and punctuation
    WordPiece    each word -> its longest prefix in the vocabulary, then "##" continuations;
                 [UNK] if the word cannot be covered
    wrap         [CLS] pieces [SEP]

`WordPieceTokenizer` has the interface of `jclip.data.tokenizer.SentencePieceTokenizer`, so it is
stored in a checkpoint as bytes (the `tokenizers` JSON) and feeds the same pipeline.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jclip.data.tokenizer import PAD_ID
from jclip.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"


def _special_ids(token_to_id) -> dict[str, int]:
  """The ids of [PAD], [UNK], [CLS] and [SEP]; raises unless all exist and [PAD] is id 0."""
  ids = {token: token_to_id(token) for token in (PAD, UNK, CLS, SEP)}
  if ids[PAD] != PAD_ID or None in ids.values():
    raise UserError(
      f"This WordPiece vocabulary has the special ids {ids}; jclip needs [PAD] at "
      f"id {PAD_ID} and an [UNK], a [CLS] and a [SEP], as in BERT's vocab.txt."
    )
  return ids


class WordPieceTokenizer:
  """Wraps a `tokenizers.Tokenizer` with [PAD] at id 0 that puts each text in [CLS] ... [SEP]."""

  def __init__(self, tokenizer_json: bytes):
    self._json = bytes(tokenizer_json)
    self._tokenizer = Tokenizer.from_str(self._json.decode("utf-8"))
    self._sep_id = _special_ids(self._tokenizer.token_to_id)[SEP]

  @classmethod
  def from_vocab_file(cls, vocab_path: str | os.PathLike, lowercase: bool = True):
    """BERT's tokenizer over `vocab_path`; lowercase=True for "uncased" checkpoints, which then
    also strip accents (as BERT does)."""
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(
        f"No WordPiece vocabulary at {vocab_path}: pass the vocab.txt of the "
        "checkpoint whose text tower these tokens feed."
      )
    vocab = models.WordPiece.read_file(os.fspath(vocab_path))
    ids = _special_ids(vocab.get)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing((SEP, ids[SEP]), (CLS, ids[CLS]))
    # As in Hugging Face's BertTokenizer, a literal "[SEP]" etc. in a text is the special token.
    tokenizer.add_special_tokens([token for token in (*ids, MASK) if token in vocab])
    return cls(tokenizer.to_str().encode("utf-8"))

  @classmethod
  def from_hf_folder(cls, folder: str | os.PathLike):
    """The tokenizer of a Hugging Face BERT-family folder: its vocab.txt, lowercased unless
    tokenizer_config.json says do_lower_case=false (a "cased" checkpoint)."""
    folder = pathlib.Path(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    options = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
    # BertTokenizer lowercases unless told otherwise.
    return cls.from_vocab_file(folder / "vocab.txt", lowercase=options.get("do_lower_case", True))

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def to_bytes(self) -> bytes:
    return self._json

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Token ids [len(texts), max_len]: [CLS] pieces [SEP], padded with 0. A text too long keeps its
    first max_len - 2 pieces and still ends in [SEP], as BERT's own truncation does."""
    if max_len < 2:
      raise UserError(f"max_len={max_len} leaves no room for [CLS] and [SEP]: use at least 2.")
    tokens_NL = np.full((len(texts), max_len), PAD_ID, np.int32)
    for row, encoding in enumerate(self._tokenizer.encode_batch(list(texts))):
      ids = encoding.ids
      if len(ids) > max_len:
        ids = ids[: max_len - 1] + [self._sep_id]
      tokens_NL[row, : len(ids)] = ids
    return tokens_NL

  def pieces(self, text: str) -> list[str]:
    """The word pieces of `text`, [CLS] and [SEP] included (for inspection and teaching)."""
    return self._tokenizer.encode(text).tokens
