"""The sentencepiece tokenizer: padding id 0, truncation, serialisation."""

import numpy as np
import pytest

from jclip.data.synthetic import CaptionedShapes
from jclip.data.tokenizer import SentencePieceTokenizer


@pytest.fixture(scope="module")
def tokenizer():
  source = CaptionedShapes("train", 200)
  return SentencePieceTokenizer.train((c for i in range(200) for c in source.captions(i)), 80)


def test_pads_with_zero_and_truncates(tokenizer):
  tokens = tokenizer.encode(["a red circle", "a small red circle in the top left " * 5], 10)
  assert tokens.shape == (2, 10) and tokens.dtype == np.int32
  length = int((tokens[0] != 0).sum())
  assert 0 < length < 10 and (tokens[0, length:] == 0).all()
  assert (tokens[1] != 0).all()  # the long caption fills all 10 positions
  assert tokens.max() < tokenizer.vocab_size


def test_empty_caption_is_all_padding(tokenizer):
  assert (tokenizer.encode([""], 6) == 0).all()


def test_lowercases_and_survives_unknown_characters(tokenizer):
  np.testing.assert_array_equal(
    tokenizer.encode(["A RED Circle"], 8), tokenizer.encode(["a red circle"], 8)
  )
  assert (tokenizer.encode(["日本 ☃"], 8) != 0).any()


def test_round_trips_through_bytes(tokenizer):
  clone = SentencePieceTokenizer(tokenizer.to_bytes())
  texts = ["a large blue square in the centre", "top left : one cross"]
  np.testing.assert_array_equal(clone.encode(texts, 12), tokenizer.encode(texts, 12))
  assert clone.vocab_size == tokenizer.vocab_size <= 80


def test_training_is_deterministic():
  texts = [c for i in range(100) for c in CaptionedShapes("train", 100).captions(i)]
  assert (
    SentencePieceTokenizer.train(texts, 60).to_bytes()
    == SentencePieceTokenizer.train(texts, 60).to_bytes()
  )


def test_tokenizers_pad_with_the_id_the_text_towers_mask():
  from jclip.data.tokenizer import PAD_ID as DATA_PAD_ID
  from jclip.models.text import PAD_ID as MODEL_PAD_ID

  assert DATA_PAD_ID == MODEL_PAD_ID  # each floor names it; they must agree
