"""The WordPiece tokenizer: [CLS] ... [SEP], padding id 0, truncation, casing, serialisation."""

import numpy as np
import pytest

from jclip.data.wordpiece import WordPieceTokenizer

VOCAB = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "a",
  "red",
  "circle",
  "blue",
  "square",
  "##s",
  "the",
  "cafe",
  "Red",
]
PAD, UNK, CLS, SEP = 0, 1, 2, 3


def _ids(*words):
  return [VOCAB.index(w) for w in words]


@pytest.fixture
def vocab_path(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n")
  return path


def test_wraps_in_cls_sep_and_pads_with_zero(vocab_path):
  tokens = WordPieceTokenizer.from_vocab_file(vocab_path).encode(["a red circle", ""], 7)
  assert tokens.shape == (2, 7) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens[0], [CLS, *_ids("a", "red", "circle"), SEP, PAD, PAD])
  # An empty text is [CLS] [SEP], as in BERT, not all padding.
  np.testing.assert_array_equal(tokens[1], [CLS, SEP, PAD, PAD, PAD, PAD, PAD])


def test_truncation_keeps_sep_last(vocab_path):
  tokens = WordPieceTokenizer.from_vocab_file(vocab_path).encode(
    ["a red circle the blue square"], 5
  )
  np.testing.assert_array_equal(tokens[0], [CLS, *_ids("a", "red", "circle"), SEP])


def test_splits_words_into_pieces_and_maps_unknown_words_to_unk(vocab_path):
  tokenizer = WordPieceTokenizer.from_vocab_file(vocab_path)
  assert tokenizer.pieces("the squares, zebra") == [
    "[CLS]",
    "the",
    "square",
    "##s",
    "[UNK]",
    "[UNK]",
    "[SEP]",
  ]  # "," is not in VOCAB either
  assert tokenizer.vocab_size == len(VOCAB)


def test_uncased_lowercases_and_strips_accents_cased_does_not(vocab_path):
  uncased = WordPieceTokenizer.from_vocab_file(vocab_path)
  cased = WordPieceTokenizer.from_vocab_file(vocab_path, lowercase=False)
  np.testing.assert_array_equal(
    uncased.encode(["Red CAFÉ"], 4)[0], [CLS, *_ids("red", "cafe"), SEP]
  )
  np.testing.assert_array_equal(cased.encode(["Red CAFÉ"], 4)[0], [CLS, *_ids("Red"), UNK, SEP])


def test_round_trips_through_bytes(vocab_path):
  tokenizer = WordPieceTokenizer.from_vocab_file(vocab_path)
  clone = WordPieceTokenizer(tokenizer.to_bytes())
  texts = ["the red squares", "A BLUE circle"]
  np.testing.assert_array_equal(clone.encode(texts, 8), tokenizer.encode(texts, 8))
  assert clone.vocab_size == tokenizer.vocab_size


def test_rejects_a_vocabulary_without_pad_at_zero(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "a"]) + "\n")
  with pytest.raises(ValueError, match=r"\[PAD\] at id 0"):
    WordPieceTokenizer.from_vocab_file(path)


def test_clear_errors_for_a_missing_file_and_no_room_for_specials(vocab_path, tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    WordPieceTokenizer.from_vocab_file(tmp_path / "nowhere" / "vocab.txt")
  with pytest.raises(ValueError, match="max_len=1"):
    WordPieceTokenizer.from_vocab_file(vocab_path).encode(["a"], 1)
