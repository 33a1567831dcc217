"""A CLIP evaluated on a bank of labelled images (jclip/data/labelled.py): zero-shot next to
classifiers trained on part of the bank, all scored on the same held-out images.

  split        stratified and seeded: each class holds out round(test_fraction x its images), at
               least one and never all, drawn by a generator seeded with (split_seed, class)
  zero-shot    each image classified by the nearest class prompt         ZeroShotEvaluator
  k-NN         the majority class of the k most similar training images  probes.knn_classifier
  logistic     logistic regression on the standardised embeddings        probes.linear_classifier
  regression
               each scored on the held-out images: accuracy, macro P/R/F1, a per-class table and
               a confusion matrix                                        classification_metrics
  cross-       k-NN and logistic regression in stratified k-fold over    probes
  validation   every image that the split uses: a second opinion, less tied to one draw
  map          the image embeddings in 2-D: PCA, and UMAP too when umap-learn is installed

The files, for a bank named <b> (written through EvalOutputs; every PNG has a JSON beside it):
<b>_labelled.json (every figure, the split, the images left out, those seen in training),
<b>_<method>_confusion.png/.json, <b>_map_<pca|umap>.png/.json, and <b>_predictions.csv (one row
per image: its class, its part, each method's prediction, and the bank's metadata columns).

A class with a single image cannot be both trained on and held out: it is left out of the split
and of the cross-validation (a warning names it), but stays one of the classes that zero-shot
chooses from, and stays on the map.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence

import numpy as np

from jclip.errors import UserError
from jclip.evaluation.classification_metrics import (
  classification_metrics,
  format_scores,
  save_confusion_matrix_png,
)
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.evaluators import ZeroShotEvaluator
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.plots import write_projection
from jclip.evaluation.probes import knn_classifier, knn_probe, linear_classifier, linear_probe
from jclip.evaluation.seen_in_training import SeenInTraining
from jclip.evaluation.zeroshot import class_prompts

ZERO_SHOT, KNN, LOGISTIC = "zero-shot", "k-NN", "logistic regression"
METHOD_FILES = {ZERO_SHOT: "zeroshot", KNN: "knn", LOGISTIC: "logreg"}  # the names in file names


@dataclasses.dataclass(frozen=True)
class LabelledOptions:
  """The choices of the evaluation; each field is the eval.py flag of the same name."""

  # Zero-shot templates, each with '{}' for the class name; None: zeroshot.DEFAULT_TEMPLATES.
  templates: Sequence[str] | None = None
  # {class name: [prompt, ...]}: full sentences that replace the templates for those classes.
  class_prompts: Mapping[str, Sequence[str]] | None = None
  test_fraction: float = 0.3
  split_seed: int = 0
  probe_folds: int = 5
  probe_neighbors: int = 5

  def __post_init__(self):
    if not 0 < self.test_fraction < 1:
      raise UserError(
        f"--test_fraction={self.test_fraction}: give the fraction of each class to hold out, "
        "between 0 and 1 (e.g. 0.3)."
      )


def stratified_split(
  labels_N: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, held-out indices), both sorted: see the module docstring. A class with fewer
  than two images is in neither."""
  train, test = [], []
  for label in np.unique(labels_N):
    members = np.flatnonzero(labels_N == label)
    if len(members) < 2:
      continue
    # A generator per class: a class's draw does not depend on the other classes.
    members = np.random.default_rng([seed, int(label)]).permutation(members)
    num_test = min(max(int(np.floor(len(members) * test_fraction + 0.5)), 1), len(members) - 1)
    test.append(members[:num_test])
    train.append(members[num_test:])
  if not test:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def check_bank(
  class_names: Sequence[str], labels_N: np.ndarray, options: LabelledOptions
) -> tuple[np.ndarray, np.ndarray]:
  """The bank's stratified_split; a UserError for a bank or options that cannot work (cheap: a
  caller checks before restoring a model or embedding anything)."""
  if len(class_names) < 2:
    raise UserError(
      f"The images have a single class, {list(class_names)}: classification needs two or more "
      "(a folder per class, or two or more labels)."
    )
  class_prompts(class_names, options.templates, options.class_prompts)  # unknown classes raise
  train_N, test_N = stratified_split(labels_N, options.test_fraction, options.split_seed)
  if len(np.unique(labels_N[train_N])) < 2:
    raise UserError(
      "Fewer than two classes have two or more images: the classifiers need two classes or more "
      "to train on, and images of each to hold out."
    )
  if options.probe_neighbors > len(train_N):
    raise UserError(
      f"--probe_neighbors={options.probe_neighbors} exceeds the {len(train_N)} images to train "
      "on: lower it."
    )
  return train_N, test_N


def _single_image_classes(labels_N: np.ndarray, class_names: Sequence[str]) -> list[str]:
  counts_C = np.bincount(labels_N, minlength=len(class_names))
  return [name for name, count in zip(class_names, counts_C, strict=True) if count == 1]


class LabelledImagesEvaluator:
  """Zero-shot, k-NN and logistic regression on a labelled bank (see the module docstring).

  Args:
    split: the bank as an EvalSplit (jclip.data.labelled.LabelledImages as its source).
    predictor: the CLIP's Predictor.
    options: prompts, the split, the probes.
    seen: which of the bank's images the run saw in training (seen_in_training), or None when
      that was not checked.
  """

  figure_names = ("zeroshot_top1", "knn_top1", "logreg_top1")

  def __init__(
    self,
    split: EvalSplit,
    predictor: Predictor,
    batch_size: int = 256,
    options: LabelledOptions | None = None,
    seen: SeenInTraining | None = None,
  ):
    self.split, self._predictor, self._batch_size = split, predictor, batch_size
    self.options, self.seen = options or LabelledOptions(), seen
    self.train_N, self.test_N = check_bank(split.class_names, split.labels_N, self.options)
    self._zero_shot = ZeroShotEvaluator(
      split,
      predictor,
      batch_size,
      templates=self.options.templates,
      class_prompts_of=self.options.class_prompts,
    )
    self.single_image_classes = _single_image_classes(split.labels_N, split.class_names)

  def _held_out_scores(self, image_emb_ND: np.ndarray, logits_NC: np.ndarray):
    """({method: classification_metrics on the held-out images}, {method: its predictions})."""
    labels_N, classes = self.split.labels_N, self.split.class_names
    train, test = self.train_N, self.test_N
    classifiers = {
      KNN: knn_classifier(self.options.probe_neighbors, len(train)),
      LOGISTIC: linear_classifier(),
    }
    predictions = {ZERO_SHOT: np.argmax(logits_NC[test], axis=1)}
    for method, classifier in classifiers.items():
      classifier.fit(image_emb_ND[train], labels_N[train])
      predictions[method] = classifier.predict(image_emb_ND[test])
    # Zero-shot has logits: its scores include the top-5 accuracy.
    scores = {ZERO_SHOT: classification_metrics(labels_N[test], classes, logits_NC=logits_NC[test])}
    for method in classifiers:
      scores[method] = classification_metrics(
        labels_N[test], classes, predictions_N=predictions[method]
      )
    return scores, predictions

  def _cross_validation(self, image_emb_ND: np.ndarray) -> dict:
    used_N = np.concatenate([self.train_N, self.test_N])
    emb_ND, labels_N = image_emb_ND[used_N], self.split.labels_N[used_N]
    folds, neighbors, seed = (
      self.options.probe_folds,
      self.options.probe_neighbors,
      self.options.split_seed,
    )
    try:
      return {
        KNN: knn_probe(emb_ND, labels_N, neighbors, folds, seed),
        LOGISTIC: linear_probe(emb_ND, labels_N, folds, seed),
      }
    except ValueError as e:  # a class with fewer images than folds
      return {"skipped": f"probe_folds={folds}: {e}"}

  def __call__(self, variables) -> dict:
    """Every figure (JSON-able), plus "image_emb_ND" and "predictions" for the report."""
    embedded = self.split.embed(self._predictor, variables, self._batch_size)
    zero_shot = self._zero_shot(variables)
    held_out, predictions = self._held_out_scores(embedded.image_emb_ND, zero_shot["logits_NC"])
    return {
      "num_images": len(self.split.labels_N),
      "class_names": list(self.split.class_names),
      "split": {
        "test_fraction": self.options.test_fraction,
        "seed": self.options.split_seed,
        "train": self.train_N.tolist(),
        "held_out": self.test_N.tolist(),
        "single_image_classes": self.single_image_classes,
      },
      "held_out": held_out,
      "zero_shot_all_images": {
        key: zero_shot[key] for key in ("top1_accuracy", "macro_f1", "num_examples")
      },
      "zero_shot_prompts": zero_shot["prompts"],
      "logit_scale": zero_shot["scale"],
      "num_neighbors": self.options.probe_neighbors,
      "cross_validation": self._cross_validation(embedded.image_emb_ND),
      "image_emb_ND": embedded.image_emb_ND,
      "predictions": predictions,
    }

  def figures(self, result: dict) -> dict[str, float]:
    return {
      f"{METHOD_FILES[method]}_top1": result["held_out"][method]["top1_accuracy"]
      for method in (ZERO_SHOT, KNN, LOGISTIC)
    }

  def _method_names(self) -> dict[str, str]:
    return {ZERO_SHOT: ZERO_SHOT, KNN: f"{self.options.probe_neighbors}-NN", LOGISTIC: LOGISTIC}

  def report(self, result: dict, outputs: EvalOutputs) -> None:
    """Prints the warnings, each method's per-class table, the comparison table and the
    cross-validation; writes the files of the module docstring."""
    name, source = self.split.name, self.split.source
    self._print_warnings()
    split, num_images = result["split"], result["num_images"]
    print(
      f"{name}: {num_images} images in {len(result['class_names'])} classes; "
      f"{len(split['train'])} train the classifiers, {len(split['held_out'])} are held out "
      f"({split['test_fraction']:.0%} of each class, seed {split['seed']})."
    )
    titles = self._method_names()
    num_prompts = sum(map(len, result["zero_shot_prompts"].values()))
    for method, scores in result["held_out"].items():
      how = (
        f" ({num_prompts} prompts, logit scale {result['logit_scale']:.2f})"
        if method == ZERO_SHOT
        else ""
      )
      print(f"{titles[method]}{how} on the {scores['num_examples']} held-out images:")
      print(format_scores(scores))
      self._confusion(method, scores, outputs)
    print(comparison_table({titles[m]: s for m, s in result["held_out"].items()}))
    everywhere = result["zero_shot_all_images"]
    print(
      f"zero-shot on all {num_images} images (it trains on none): top-1 "
      f"{everywhere['top1_accuracy']:.3f}, macro F1 {everywhere['macro_f1']:.3f}"
    )
    self._print_cross_validation(result["cross_validation"], result["num_images"])
    for method in ("pca", "umap"):
      if method == "pca" or importlib.util.find_spec("umap") is not None:
        self._map(result["image_emb_ND"], method, outputs)
    self._predictions_csv(result["predictions"], outputs)
    outputs.json(
      f"{name}_labelled.json",
      {
        "images": source.paths,
        **{
          key: value for key, value in result.items() if key not in ("image_emb_ND", "predictions")
        },
        "seen_in_training": None if self.seen is None else self.seen.to_json(),
        "left_out": [{"file": path, "why": why} for path, why in source.skipped],
      },
    )

  def _print_warnings(self) -> None:
    name, skipped = self.split.name, self.split.source.skipped
    if skipped:
      print(f"warning: {len(skipped)} file(s) of {name} left out (all listed in the JSON):")
      for path, why in skipped[:5]:
        print(f"  {path}: {why}")
    if self.single_image_classes:
      print(
        f"warning: {len(self.single_image_classes)} class(es) have a single image, "
        f"{self.single_image_classes}: left out of the split and the cross-validation "
        "(zero-shot may still predict them)."
      )
    if self.seen is not None and self.seen.indices:
      held_out_seen = np.isin(self.test_N, self.seen.indices).sum()
      print(
        self.seen.warning(name)
        + f" Of the {len(self.test_N)} held-out images, {held_out_seen} were seen."
      )

  def _confusion(self, method: str, scores: dict, outputs: EvalOutputs) -> None:
    stem = f"{self.split.name}_{METHOD_FILES[method]}_confusion"
    classes = self.split.class_names
    save_confusion_matrix_png(
      scores["confusion_matrix"],
      classes,
      outputs.path(f"{stem}.png"),
      title=f"{self.split.name}, {self._method_names()[method]}: accuracy "
      f"{scores['top1_accuracy']:.3f} ({scores['num_examples']} held out)",
    )
    outputs.json(
      f"{stem}.json",
      {
        "method": method,
        "class_names": list(classes),
        "rows": "true class",
        "columns": "predicted class",
        "matrix": scores["confusion_matrix"],
      },
    )

  def _print_cross_validation(self, cross_validation: dict, num_images: int) -> None:
    if "skipped" in cross_validation:
      print(f"Cross-validation skipped: {cross_validation['skipped']}")
      return
    folds = cross_validation[KNN]["num_folds"]
    used = len(self.train_N) + len(self.test_N)
    print(f"Cross-validation, {folds} stratified folds over {used} of the {num_images} images:")
    for method, title in ((KNN, self._method_names()[KNN]), (LOGISTIC, LOGISTIC)):
      scores = cross_validation[method]
      print(
        f"  {title:<20} accuracy {scores['accuracy_mean']:.3f} ± {scores['accuracy_std']:.3f}  "
        f"macro F1 {scores['macro_f1_mean']:.3f} ± {scores['macro_f1_std']:.3f}"
      )

  def _map(self, image_emb_ND: np.ndarray, method: str, outputs: EvalOutputs) -> None:
    split = self.split
    write_projection(
      outputs,
      f"{split.name}_map_{method}",
      image_emb_ND,
      split.labels_N,
      split.class_names,
      method,
      title=f"{split.name}: {len(split.labels_N)} image embeddings, {method.upper()}",
      images=split.source.paths,
    )

  def _predictions_csv(self, predictions: dict, outputs: EvalOutputs) -> None:
    source, classes = self.split.source, self.split.class_names
    part = np.full(len(source), "left out", dtype=object)
    part[self.train_N], part[self.test_N] = "train", "held out"
    predicted = {method: np.full(len(source), "", dtype=object) for method in predictions}
    for method, predicted_T in predictions.items():
      predicted[method][self.test_N] = [classes[c] for c in predicted_T]
    metadata_columns = list(dict.fromkeys(key for row in source.metadata for key in row))
    with open(outputs.path(f"{self.split.name}_predictions.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["image", "class", "part", *predictions, *metadata_columns])
      for index, path in enumerate(source.paths):
        writer.writerow(
          [path, classes[self.split.labels_N[index]], part[index]]
          + [predicted[method][index] for method in predictions]
          + [source.metadata[index].get(column, "") for column in metadata_columns]
        )


def comparison_table(scores_by_method: Mapping[str, dict]) -> str:
  """One line per method: accuracy and macro precision, recall and F1."""
  width = max(len("method"), *map(len, scores_by_method))
  lines = [f"{'method':<{width}}  accuracy  macro P  macro R  macro F1"]
  lines += [
    f"{method:<{width}}  {s['top1_accuracy']:8.3f}  {s['macro_precision']:7.3f}  "
    f"{s['macro_recall']:7.3f}  {s['macro_f1']:8.3f}"
    for method, s in scores_by_method.items()
  ]
  return "\n".join(lines)
