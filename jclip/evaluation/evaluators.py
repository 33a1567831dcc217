"""Evaluators: plain classes that score a model's variables on one split (like big_vision's), run by
the training loop as config.evals says and by eval.py on a restored checkpoint.

    config.evals.<name> = dict(type=..., split="val", every=100, batch_size=256)
    config.best_metric  = "<name>/<figure>"     e.g. "val/rsum"; None keeps no best checkpoint

Every `every` steps, and at the last step, each evaluator scores the current weights on its split;
the loop logs its figures prefixed with its name ("val/i2t_r10") to metrics.jsonl, TensorBoard and
the console (NaN when the weights have gone non-finite), and keeps the checkpoint of the step where
`best_metric` was highest. every=0 turns an evaluator off. The types, and the figures each returns
to the loop (all fractions; higher is better):

  retrieval       (CLIP) i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10: recall@k both ways with the
                  multi-caption protocol of retrieval.py; rsum: the sum of the six (at most 6), the
                  usual single figure of the retrieval literature (there in percent, at most 600)
  zeroshot        (CLIP, a split with class labels) top1, macro_f1: each image classified by the
                  nearest class prompt; `templates` (optional) replaces zeroshot.DEFAULT_TEMPLATES
  classification  (image or text classifier, labelled split) top1, macro_f1 of the classifier

An evaluator called with variables returns all it measured (`result`); `figures(result)` is what
the loop logs, `report(result, outputs)` what eval.py prints and writes. The evaluators of one
split share its EvalSplit: its images are decoded once per run and embedded once per step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from flax import linen as nn

from jclip.batching import apply_in_batches
from jclip.config.defaults import EVAL_ENTRY_DEFAULTS, ConfigError
from jclip.data.sources import make_source
from jclip.data.tokenizer import Tokenizer
from jclip.evaluation.classification_metrics import (
  classification_metrics,
  format_scores,
  save_confusion_matrix_png,
)
from jclip.evaluation.embedding import EvalSplit, Predictor
from jclip.evaluation.outputs import EvalOutputs
from jclip.evaluation.retrieval import QUERYBANK_BETA, QuerybankNorm, retrieval_metrics
from jclip.evaluation.zeroshot import class_prompts, zero_shot_logits, zero_shot_weights

RECALLS = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in (1, 5, 10))


def _all_finite(*arrays) -> bool:
  """False when weights gone non-finite made NaN outputs: their rankings and argmaxes are
  meaningless (NaN compares false, so every NaN query would look like a perfect hit), and the
  evaluators report NaN instead."""
  return all(np.isfinite(array).all() for array in arrays)


def _require_classes(split: EvalSplit, where: str) -> None:
  if split.class_names is None:
    raise ConfigError(
      f"{where}: the {split.name} split has no class labels (a folder needs a "
      "'category' column in captions.tsv). Evaluate a labelled split, or set "
      f"{where}.every=0."
    )


class RetrievalEvaluator:
  """Image <-> text recall@1/5/10, median ranks and rsum on every image and caption of a split.
  With a `querybank` split (e.g. some of the training split: queries that are not the test
  queries), the same figures with querybank normalisation against hubness as well
  (retrieval.QuerybankNorm), under "querybank"; the plain figures stay what the loop logs."""

  figure_names = RECALLS + ("rsum",)
  tasks = ("clip",)

  def __init__(
    self,
    split: EvalSplit,
    predictor: Predictor,
    batch_size: int = 256,
    where: str = "retrieval",
    querybank: EvalSplit | None = None,
  ):
    del where  # every split can be scored
    self.split, self._predictor, self._batch_size = split, predictor, batch_size
    self._querybank = querybank

  def __call__(self, variables) -> dict:
    embedded = self.split.embed(self._predictor, variables, self._batch_size)
    if not _all_finite(embedded.image_emb_ND, embedded.text_emb_MD):
      return dict.fromkeys(self.figure_names, np.nan)
    test = (embedded.image_emb_ND, embedded.text_emb_MD, embedded.text_to_image_M)
    result = retrieval_metrics(*test)
    if self._querybank is not None:
      bank = self._querybank.embed(self._predictor, variables, self._batch_size)
      result["querybank"] = {
        "bank": f"{len(bank.image_emb_ND)} images and {len(bank.captions)} captions of "
        f"{bank.split}",
        "beta": QUERYBANK_BETA,
        **retrieval_metrics(
          *test,
          i2t_norm=QuerybankNorm.from_bank(bank.image_emb_ND, embedded.text_emb_MD),
          t2i_norm=QuerybankNorm.from_bank(bank.text_emb_MD, embedded.image_emb_ND),
        ),
      }
    return result

  def figures(self, result: dict) -> dict[str, float]:
    return {name: result[name] for name in self.figure_names}

  @staticmethod
  def _print_recalls(result: dict) -> None:
    for direction in ("i2t", "t2i"):
      print(
        f"  {direction}: "
        + "  ".join(f"R@{k}={result[f'{direction}_r{k}']:.3f}" for k in (1, 5, 10))
        + f"  median rank {result[f'{direction}_median_rank']:.0f}"
      )
    print(f"  rsum (the six recalls added up) {result['rsum']:.3f}")

  def report(self, result: dict, outputs: EvalOutputs) -> None:
    split = self.split
    print(f"{split.name} retrieval ({len(split.source)} images, {len(split.captions)} captions):")
    self._print_recalls(result)
    if "querybank" in result:
      bank = result["querybank"]
      print(
        f"{split.name} retrieval with querybank normalisation (bank: {bank['bank']}, beta "
        f"{bank['beta']:g}):"
      )
      self._print_recalls(bank)
    outputs.json(f"{split.name}_retrieval.json", result)


class ZeroShotEvaluator:
  """Zero-shot classification of a labelled split's images by the nearest class prompt: top-1 and
  top-5 accuracy, macro and per-class P/R/F1, the confusion matrix. The prompts are the class
  names in `templates` (default: zeroshot.DEFAULT_TEMPLATES), or a class's own `class_prompts`
  ({class name: [sentence, ...]})."""

  figure_names = ("top1", "macro_f1")
  tasks = ("clip",)

  def __init__(
    self,
    split: EvalSplit,
    predictor: Predictor,
    batch_size: int = 256,
    where: str = "zeroshot",
    templates: Sequence[str] | None = None,
    class_prompts_of: Mapping[str, Sequence[str]] | None = None,
  ):
    _require_classes(split, where)
    self.split, self._predictor, self._batch_size = split, predictor, batch_size
    self.prompts = class_prompts(split.class_names, templates, class_prompts_of)

  def __call__(self, variables) -> dict:
    """classification_metrics' result, plus the logit scale, the prompts and the logits
    "logits_NC" (the trained scale times the cosine similarities)."""
    embedded = self.split.embed(self._predictor, variables, self._batch_size)
    class_weights_CD = zero_shot_weights(
      lambda texts: self._predictor.texts(variables, texts, self._batch_size), self.prompts
    )
    if not _all_finite(embedded.image_emb_ND, class_weights_CD):
      return dict.fromkeys(("top1_accuracy", "macro_f1"), np.nan)
    scale = self._predictor.logit_scale(variables)
    logits_NC = zero_shot_logits(embedded.image_emb_ND, class_weights_CD, scale)
    return {
      **classification_metrics(self.split.labels_N, self.split.class_names, logits_NC=logits_NC),
      "scale": scale,
      "prompts": dict(zip(self.split.class_names, self.prompts, strict=True)),
      "logits_NC": logits_NC,
    }

  def figures(self, result: dict) -> dict[str, float]:
    return {"top1": result["top1_accuracy"], "macro_f1": result["macro_f1"]}

  def report(self, result: dict, outputs: EvalOutputs) -> None:
    name, classes = self.split.name, self.split.class_names
    outputs.json(
      f"{name}_zeroshot.json",
      {"split": name, **{key: value for key, value in result.items() if key != "logits_NC"}},
    )
    save_confusion_matrix_png(
      result["confusion_matrix"],
      classes,
      outputs.path(f"{name}_zeroshot_confusion.png"),
      title=f"{name} zero-shot, top-1 {result['top1_accuracy']:.3f}",
    )
    # With 5 classes or fewer every image's class is in its top 5: the figure says nothing.
    top5 = (
      f"  top-5 {result['top5_accuracy']:.3f}"
      if len(classes) > 5
      else f"  (top-5 is 1 by construction with {len(classes)} classes)"
    )
    print(
      f"{name} zero-shot ({result['num_examples']} images, {len(classes)} classes, "
      f"{sum(map(len, self.prompts))} prompts, scale {result['scale']:.2f}): top-1 "
      f"{result['top1_accuracy']:.3f}{top5}\n{format_scores(result)}"
    )


class ClassificationEvaluator:
  """A classifier's accuracy, macro and per-class P/R/F1 and confusion matrix: on every image of a
  split (image classifier), or on every caption, labelled with its image's class (text
  classifier)."""

  figure_names = ("top1", "macro_f1")
  tasks = ("image_classifier", "text_classifier")

  def __init__(
    self,
    split: EvalSplit,
    predictor: Predictor,
    batch_size: int = 256,
    where: str = "classification",
  ):
    _require_classes(split, where)
    self.split, self._predictor, self._batch_size = split, predictor, batch_size
    self._on_captions = predictor.config.task == "text_classifier"

  def __call__(self, variables) -> dict:
    logits_batch = lambda x: self._predictor.logits_batch(variables, x)
    if self._on_captions:
      logits_NC = apply_in_batches(logits_batch, self.split.tokens_ML, self._batch_size)
      labels_N = self.split.labels_N[self.split.text_to_image_M]
    else:
      logits_NC = self.split.apply_to_images(logits_batch, self._batch_size)
      labels_N = self.split.labels_N
    if not _all_finite(logits_NC):
      return dict.fromkeys(("top1_accuracy", "macro_f1"), np.nan)
    return classification_metrics(labels_N, self.split.class_names, logits_NC=logits_NC)

  def figures(self, result: dict) -> dict[str, float]:
    return {"top1": result["top1_accuracy"], "macro_f1": result["macro_f1"]}

  def report(self, result: dict, outputs: EvalOutputs) -> None:
    task, name = self._predictor.config.task, self.split.name
    outputs.json(f"{name}_classification.json", {"task": task, "split": name, **result})
    save_confusion_matrix_png(
      result["confusion_matrix"],
      self.split.class_names,
      outputs.path(f"{name}_confusion.png"),
      title=f"{task}, {name}: accuracy {result['top1_accuracy']:.3f}",
    )
    what = "captions" if self._on_captions else "images"
    print(
      f"{task} on {name} ({result['num_examples']} {what}): accuracy "
      f"{result['top1_accuracy']:.3f}\n{format_scores(result)}"
    )


EVALUATORS = {
  "retrieval": RetrievalEvaluator,
  "zeroshot": ZeroShotEvaluator,
  "classification": ClassificationEvaluator,
}


def _options(entry: ml_collections.ConfigDict) -> dict:
  """The constructor options of an evals entry beyond its split and batch size."""
  templates = None if entry.templates is None else list(entry.templates)
  return dict(templates=templates) if entry.type == "zeroshot" else {}


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with config.evals and config.best_metric, one message per problem (no data is
  read: a missing split is found when the evaluators are built)."""
  errors, produced = [], []
  for name, entry in (config.evals or {}).items():
    where = f"evals.{name}"
    unknown = sorted(set(entry) - set(EVAL_ENTRY_DEFAULTS) - {"type"})
    if unknown:
      errors.append(
        f"{where} has unknown field(s) {unknown}: the fields are "
        f"{sorted(set(EVAL_ENTRY_DEFAULTS) | {'type'})}."
      )
      continue
    if entry.type not in EVALUATORS:
      errors.append(f"{where}.type={entry.type!r}: choose one of {sorted(EVALUATORS)}.")
      continue
    if config.task not in EVALUATORS[entry.type].tasks:
      errors.append(
        f"{where}.type={entry.type!r} evaluates "
        f"{' or '.join(EVALUATORS[entry.type].tasks)} models, but config.task="
        f"{config.task!r}: use one of "
        f"{sorted(k for k, e in EVALUATORS.items() if config.task in e.tasks)}."
      )
    if entry.every < 0 or entry.batch_size <= 0:
      errors.append(
        f"{where}: every={entry.every} must be >= 0 (0 turns it off) and batch_size="
        f"{entry.batch_size} positive."
      )
    if entry.every > 0:
      produced += [f"{name}/{figure}" for figure in EVALUATORS[entry.type].figure_names]
  best = config.best_metric
  if best and not errors and best not in produced:
    errors.append(
      f"best_metric={best!r} is not a figure of any evaluator that runs: choose one of "
      f"{produced}, or None to keep no best checkpoint."
      if produced
      else f"best_metric={best!r}, but no evaluator runs (config.evals): set best_metric "
      "to None, or add an evaluator."
    )
  return errors


class Evaluators:
  """The evaluators of config.evals, built for one model: `run(step, variables)` at each step where
  `due(step)`. Each split is read once for all the evaluators on it."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, tokenizer: Tokenizer):
    self.num_steps = config.num_steps
    self.seconds = 0.0  # spent evaluating so far
    self._predictor = predictor = Predictor(model, tokenizer, config)
    splits = {}
    self._scheduled = []
    for name, entry in (config.evals or {}).items():
      if entry.every == 0:
        continue
      where = f"evals.{name}"
      if entry.split not in splits:
        try:
          source = make_source(config.data, entry.split)
        except ValueError as e:  # includes the folder's DataError
          raise ConfigError(f"{where}.split={entry.split!r}: {e}") from None
        splits[entry.split] = EvalSplit(source, config, tokenizer, keep_views=True)
      evaluator = EVALUATORS[entry.type](
        splits[entry.split], predictor, entry.batch_size, where, **_options(entry)
      )
      self._scheduled.append((name, entry.every, evaluator))

  def __len__(self) -> int:
    return len(self._scheduled)

  def _due(self, step: int) -> list:
    return [
      (name, evaluator)
      for name, every, evaluator in self._scheduled
      if step % every == 0 or step == self.num_steps
    ]

  def due(self, step: int) -> bool:
    """Whether any evaluator runs at `step` (1-based): each every `every` steps and at the last."""
    return bool(self._due(step))

  def run(self, step: int, variables) -> dict[str, float]:
    """The figures of every evaluator due at `step`, prefixed with its name ("val/rsum")."""
    start = time.perf_counter()
    variables = self._predictor.on_devices(variables)  # once for every evaluator of the step
    figures = {
      f"{name}/{figure}": value
      for name, evaluator in self._due(step)
      for figure, value in evaluator.figures(evaluator(variables)).items()
    }
    self.seconds += time.perf_counter() - start
    return figures
