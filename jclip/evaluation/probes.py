"""Probes: how much class information the frozen embeddings hold, measured by simple classifiers.

A probe trains a small classifier on embeddings (image or text, any [N, D] array) and labels, with
the encoder frozen. If a linear model separates the classes, the information is there and laid out
linearly; zero-shot accuracy below the probe's means the text side, not the image side, is at fault.

  linear probe  logistic regression on standardised features (each dimension to mean 0, std 1,
                fitted on the training folds only, so the test fold never leaks into it)
  k-NN          the majority label of the k training embeddings with the highest cosine similarity

Both are scored by stratified k-fold cross-validation: the examples are split into k folds with the
same class proportions, each fold is the test set once, and the mean and standard deviation of
accuracy and macro F1 over the k test folds are reported. Every class needs at least k examples, so
that it appears in every test fold.

Examples that are not independent must stay in one fold: the 5 captions of one image say nearly the
same thing, and a probe that trains on four of them and is tested on the fifth measures memory, not
generalisation. `groups_N` (e.g. each caption's image index) keeps every group in a single fold
(sklearn's StratifiedGroupKFold); every class then needs at least k groups.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def cross_validate(
  make_classifier: Callable[[int], ClassifierMixin],
  emb_ND: np.ndarray,
  labels_N: np.ndarray,
  num_folds: int = 5,
  seed: int = 0,
  groups_N: np.ndarray | None = None,
) -> dict:
  """Stratified k-fold scores of a fresh classifier per fold.

  `make_classifier(num_train)` returns an unfitted sklearn classifier for a training fold of
  num_train examples. The folds are shuffled with `seed`, so a result is reproducible. With
  `groups_N` (one group id per example), no group is split across folds.

  Returns a JSON-able dict: accuracy_mean, accuracy_std, macro_f1_mean, macro_f1_std, num_folds,
  fold_accuracy (one value per fold).
  """
  emb_ND, labels_N = np.asarray(emb_ND, np.float32), np.asarray(labels_N)
  if emb_ND.ndim != 2 or labels_N.shape != (len(emb_ND),):
    raise ValueError(
      f"emb {emb_ND.shape} and labels {labels_N.shape} must be [N, D] and [N]: "
      "one label per embedding."
    )
  if num_folds < 2:
    raise ValueError(f"num_folds={num_folds}; cross-validation needs at least 2 folds.")
  if groups_N is not None and np.shape(groups_N) != labels_N.shape:
    raise ValueError(
      f"groups {np.shape(groups_N)} must hold one group id per embedding, {labels_N.shape}."
    )
  classes = np.unique(labels_N)
  if len(classes) < 2:
    raise ValueError("labels hold a single class; a probe needs at least two.")
  # What a fold draws from: examples, or whole groups.
  units = "examples" if groups_N is None else "groups"
  counts = {
    c.item(): (
      int(np.sum(labels_N == c))
      if groups_N is None
      else len(np.unique(np.asarray(groups_N)[labels_N == c]))
    )
    for c in classes
  }
  too_small = {c: n for c, n in counts.items() if n < num_folds}
  if too_small:
    raise ValueError(
      f"num_folds={num_folds} but these classes have fewer {units} than folds "
      f"(class: count) {too_small}; lower num_folds or drop those classes."
    )
  if groups_N is None:
    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  else:
    folds = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  accuracies, f1s = [], []
  for train, test in folds.split(emb_ND, labels_N, groups_N):
    classifier = make_classifier(len(train)).fit(emb_ND[train], labels_N[train])
    predictions = classifier.predict(emb_ND[test])
    accuracies.append(float(np.mean(predictions == labels_N[test])))
    f1s.append(float(f1_score(labels_N[test], predictions, average="macro", zero_division=0)))
  return {
    "accuracy_mean": float(np.mean(accuracies)),
    "accuracy_std": float(np.std(accuracies)),
    "macro_f1_mean": float(np.mean(f1s)),
    "macro_f1_std": float(np.std(f1s)),
    "num_folds": num_folds,
    "fold_accuracy": accuracies,
  }


def linear_classifier(inverse_regularization: float = 1.0, max_iter: int = 1000) -> ClassifierMixin:
  """An unfitted logistic regression on standardised features (the scaler is fitted on the
  training examples only). inverse_regularization is sklearn's C: smaller values regularise more
  (useful with few examples per class and many dimensions)."""
  return make_pipeline(
    StandardScaler(), LogisticRegression(C=inverse_regularization, max_iter=max_iter)
  )


def knn_classifier(num_neighbors: int, num_train: int) -> ClassifierMixin:
  """An unfitted k-nearest-neighbour classifier by cosine similarity, for a training set of
  num_train examples (at least num_neighbors)."""
  if num_neighbors < 1:
    raise ValueError(f"num_neighbors={num_neighbors}; it must be at least 1.")
  if num_neighbors > num_train:
    raise ValueError(
      f"num_neighbors={num_neighbors} exceeds the {num_train} training examples; lower it."
    )
  return KNeighborsClassifier(num_neighbors, metric="cosine")


def linear_probe(
  emb_ND: np.ndarray,
  labels_N: np.ndarray,
  num_folds: int = 5,
  seed: int = 0,
  inverse_regularization: float = 1.0,
  max_iter: int = 1000,
  groups_N: np.ndarray | None = None,
) -> dict:
  """Cross-validated `linear_classifier` (see `cross_validate`)."""
  return cross_validate(
    lambda num_train: linear_classifier(inverse_regularization, max_iter),
    emb_ND,
    labels_N,
    num_folds,
    seed,
    groups_N,
  )


def knn_probe(
  emb_ND: np.ndarray,
  labels_N: np.ndarray,
  num_neighbors: int = 5,
  num_folds: int = 5,
  seed: int = 0,
  groups_N: np.ndarray | None = None,
) -> dict:
  """Cross-validated `knn_classifier` (see `cross_validate`)."""
  return cross_validate(
    lambda num_train: knn_classifier(num_neighbors, num_train),
    emb_ND,
    labels_N,
    num_folds,
    seed,
    groups_N,
  )
