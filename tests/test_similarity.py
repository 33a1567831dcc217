"""Similarity matrix of matched pairs: orientation, separation score, trace, heatmap."""

import numpy as np
import pytest
from PIL import Image

from jclip.evaluation.similarity import (
  save_similarity_heatmap,
  separation_score,
  similarity_matrix,
  similarity_summary,
)


def test_rows_are_captions_and_columns_are_images():
  image_emb = np.array([[1.0, 0.0], [0.0, 1.0]])
  text_emb = np.array([[3.0, 4.0], [0.0, -2.0]])  # not unit: the matrix must be cosine
  sim = similarity_matrix(image_emb, text_emb)
  # caption 0 = (0.6, 0.8): cos 0.6 with image 0, 0.8 with image 1; caption 1 = (0, -1).
  np.testing.assert_allclose(sim, [[0.6, 0.8], [0.0, -1.0]], atol=1e-6)


def test_separation_score_hand_examples():
  # diagonal mean (0.9 + 0.7 + 0.8) / 3 = 0.8; off-diagonal (0.1 + 0.2 + 0.3 + 0 + 0.1 + 0.5) / 6
  # = 0.2; score 0.6.
  sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.7, 0.0], [0.1, 0.5, 0.8]])
  assert separation_score(sim) == pytest.approx(0.6)
  assert similarity_summary(sim) == pytest.approx(
    {
      "num_pairs": 3,
      "separation_score": 0.6,
      "trace": 2.4,
      "matched_mean": 0.8,
      "unmatched_mean": 0.2,
    }
  )
  assert separation_score(np.full((4, 4), 0.7)) == pytest.approx(0.0)  # all alike: no separation
  assert separation_score(np.eye(5)) == pytest.approx(1.0)
  # Every caption matches the wrong image.
  assert separation_score(1.0 - np.eye(2)) == pytest.approx(-1.0)


def test_bad_shapes_are_rejected():
  with pytest.raises(ValueError, match="square"):
    separation_score(np.ones((2, 3)))
  with pytest.raises(ValueError, match="N >= 2"):
    separation_score(np.ones((1, 1)))
  with pytest.raises(ValueError, match="one caption per image"):
    similarity_matrix(np.ones((3, 4)), np.ones((2, 4)))


def test_heatmap_png(tmp_path):
  path = tmp_path / "sim.png"
  captions = ["a small red circle in the top left of a picture that goes on " * 3, "a cross", "x"]
  save_similarity_heatmap(np.eye(3) * 0.8 + 0.1, captions, str(path), image_labels=["a", "b", "c"])
  with Image.open(path) as image:
    assert image.format == "PNG" and min(image.size) > 100
  with pytest.raises(ValueError, match="one of each per pair"):
    save_similarity_heatmap(np.eye(3), captions[:2], str(path))
