"""Probes: separable clusters are learned, random labels stay at chance, folds are validated."""

import numpy as np
import pytest

from jclip.evaluation.probes import knn_probe, linear_probe

NUM_CLASSES = 4


def _clusters(per_class=30, dim=16, spread=0.3, seed=0):
  """Gaussian blobs around random unit centres, one per class."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(NUM_CLASSES, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = np.repeat(np.arange(NUM_CLASSES), per_class)
  return centres[labels] + spread * rng.normal(size=(len(labels), dim)) / np.sqrt(dim), labels


@pytest.mark.parametrize("probe", [linear_probe, knn_probe])
def test_separable_clusters_are_classified(probe):
  emb, labels = _clusters()
  result = probe(emb, labels, num_folds=3)
  assert result["accuracy_mean"] >= 0.97 and result["macro_f1_mean"] >= 0.97
  assert result["num_folds"] == 3 and len(result["fold_accuracy"]) == 3


@pytest.mark.parametrize("probe", [linear_probe, knn_probe])
def test_random_labels_stay_near_chance(probe):
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(400, 16))
  labels = rng.integers(0, NUM_CLASSES, size=400)
  result = probe(emb, labels, num_folds=4, seed=3)
  # Chance is 1/4; 400 examples put the standard error of the mean accuracy near 0.02.
  assert abs(result["accuracy_mean"] - 1 / NUM_CLASSES) < 0.08


def test_string_labels_and_seed_reproducibility():
  emb, labels = _clusters(per_class=10, spread=2.0)  # overlapping: the folds matter
  names = np.array(["a", "b", "c", "d"])[labels]
  first, again = (linear_probe(emb, names, num_folds=5, seed=7) for _ in range(2))
  assert first == again
  assert knn_probe(emb, names, seed=7) != knn_probe(emb, names, seed=8)


def test_a_class_smaller_than_the_folds_is_named():
  emb, labels = _clusters(per_class=5)
  labels[:3] = 9  # class 9 has 3 examples, class 0 has 2
  with pytest.raises(ValueError, match=r"\{0: 2, 9: 3\}; lower num_folds"):
    linear_probe(emb, labels, num_folds=4)


def test_bad_arguments():
  emb, labels = _clusters(per_class=5)
  with pytest.raises(ValueError, match="one label per embedding"):
    linear_probe(emb, labels[:-1])
  with pytest.raises(ValueError, match="at least 2 folds"):
    knn_probe(emb, labels, num_folds=1)
  with pytest.raises(ValueError, match="single class"):
    knn_probe(emb, np.zeros(len(emb), int))
  with pytest.raises(ValueError, match="num_neighbors=16 exceeds the 15 training"):
    knn_probe(emb, labels, num_neighbors=16, num_folds=4)


def test_groups_never_straddle_folds_and_stop_near_duplicate_leaks():
  """Five near-copies of every item (like an image's five captions) with random labels: plain
  k-fold finds each test copy's twins in training (k-NN 'learns' random labels); grouped folds
  keep the copies together and the probe falls back to chance."""
  rng = np.random.default_rng(0)
  items = rng.normal(size=(80, 16))
  labels_items = rng.integers(0, NUM_CLASSES, size=80)
  emb = np.repeat(items, 5, axis=0) + 0.01 * rng.normal(size=(400, 16))
  labels, groups = np.repeat(labels_items, 5), np.repeat(np.arange(80), 5)
  leaky = knn_probe(emb, labels, num_neighbors=1, num_folds=4)
  grouped = knn_probe(emb, labels, num_neighbors=1, num_folds=4, groups_N=groups)
  assert leaky["accuracy_mean"] > 0.95
  assert abs(grouped["accuracy_mean"] - 1 / NUM_CLASSES) < 0.15


def test_grouped_folds_count_groups_per_class():
  emb, labels = _clusters(per_class=6)
  groups = np.arange(len(labels)) // 3  # 2 groups of 3 per class
  with pytest.raises(ValueError, match=r"fewer groups than folds .*lower num_folds"):
    linear_probe(emb, labels, num_folds=3, groups_N=groups)
  with pytest.raises(ValueError, match="one group id per embedding"):
    linear_probe(emb, labels, groups_N=groups[:-1])
