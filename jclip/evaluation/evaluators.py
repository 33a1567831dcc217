"""Evaluators that run inside the training loop, chosen by the config (like big_vision's evals).

    config.evals.<name> = dict(type=..., split="val", every=100, batch_size=256)
    config.best_metric  = "<name>/<figure>"     e.g. "val/rsum"; None keeps no best checkpoint

Every `every` steps, and at the last step, each evaluator scores the current weights on its split;
the loop logs its figures prefixed with its name ("val/i2t_r10") to metrics.jsonl, TensorBoard and
the console (NaN when the weights have gone non-finite), and keeps the checkpoint of the step where
`best_metric` was highest. every=0 turns an evaluator off. The types, and the figures each returns (all fractions; higher is better):

  retrieval       (CLIP) i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10: recall@k both ways with the
                  multi-caption protocol of retrieval.py; rsum: the sum of the six (at most 6), the
                  usual single figure of the retrieval literature (there in percent, at most 600)
  zeroshot        (CLIP, a split with class labels) top1, macro_f1: each image classified by the
                  nearest class prompt; `templates` (optional) replaces zeroshot.DEFAULT_TEMPLATES
  classification  (image or text classifier, labelled split) top1, macro_f1 of the classifier

An evaluator decodes its split's images and tokenizes its texts once, when it is built; a run then
costs only the forward passes.
"""

from __future__ import annotations

import functools
import time

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from jclip.config import EVAL_ENTRY_DEFAULTS, ConfigError
from jclip.data.augment import eval_view
from jclip.data.sources import class_names_of, labels_of, make_source
from jclip.data.tokenizer import Tokenizer
from jclip.evaluation.classification_metrics import classification_metrics
from jclip.evaluation.embedding import Embedder, apply_in_batches, split_captions
from jclip.evaluation.retrieval import retrieval_metrics
from jclip.evaluation.zeroshot import class_prompts, zero_shot_logits, zero_shot_weights
from jclip.pixels import normalize_images
from jclip.runs.feature_cache import split_caption_features, split_features

RECALLS = tuple(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in (1, 5, 10))


class Model:
  """The model under evaluation, its tokenizer and its run's config, and what its evaluators share:
  the jitted functions (built on first use), each split's decoded images (once per run), and each
  split's image embeddings under the weights of the step at hand (once per step: retrieval and
  zero-shot on one split embed its images once)."""

  def __init__(self, model: nn.Module, tokenizer: Tokenizer, config: ml_collections.ConfigDict):
    self.module, self.tokenizer, self.config = model, tokenizer, config
    self._sources, self._views = {}, {}  # split -> its source, and its uint8 [N, S, S, 3]
    self._features = {}  # split -> a locked backbone's features [N, C] of the eval views
    self._embedded_with, self._image_emb = None, {}  # the variables, and split -> [N, D]

  @functools.cached_property
  def embedder(self) -> Embedder:
    return Embedder(self.module, self.tokenizer, self.config)

  @functools.cached_property
  def apply(self):
    return jax.jit(self.module.apply)

  def eval_views(self, source) -> np.ndarray:
    """Every image of a source as the model sees it at evaluation: uint8 [N, S, S, 3]."""
    if source.split not in self._views:
      self._sources[source.split] = source
      size = self.config.data.image_size
      self._views[source.split] = np.stack([eval_view(source[i]["image"], size)
                                            for i in range(len(source))])
    return self._views[source.split]

  def image_embeddings(self, variables, split: str, batch_size: int) -> np.ndarray:
    """The unit embeddings [N, D] of a split's images (eval_views first) under `variables`."""
    if variables is not self._embedded_with:  # another step's weights
      self._embedded_with, self._image_emb = variables, {}
    if split not in self._image_emb:
      if self.config.data.get("cached_views", 0):
        # A locked backbone: its features never change, only the projection after it does.
        if split not in self._features:
          self._features[split] = split_features(self.config, self._sources[split], variables,
                                                 num_views=1)[:, 0]
        embeddings = self.embedder.features(variables, self._features[split], batch_size)
      else:
        embeddings = self.embedder.image_arrays(variables, self._views[split], batch_size)
      self._image_emb[split] = embeddings
    return self._image_emb[split]


def _all_finite(*arrays) -> bool:
  """False when weights gone non-finite made NaN outputs: their rankings and argmaxes are
  meaningless (NaN compares false, so every NaN query would look like a perfect hit), and the
  evaluators report NaN instead."""
  return all(np.isfinite(array).all() for array in arrays)


def _class_labels(source, where: str) -> tuple[list[str], np.ndarray]:
  class_names = class_names_of(source)
  if class_names is None:
    split = getattr(source, "split", "given")
    raise ConfigError(f"{where}: the {split} split has no class labels (a folder needs a "
                      "'category' column in captions.tsv). Evaluate a labelled split, or set "
                      f"{where}.every=0.")
  return class_names, labels_of(source)


class RetrievalEvaluator:
  """Image <-> text recall@1/5/10 and rsum on every image and caption of a split."""

  metrics = RECALLS + ("rsum",)
  tasks = ("clip",)

  def __init__(self, source, entry: ml_collections.ConfigDict, model: Model, where: str):
    del where  # every split can be scored
    self._model, self._embedder, self._batch_size = model, model.embedder, entry.batch_size
    self._split, self._source = source.split, source
    model.eval_views(source)
    captions, self._text_to_image_M = split_captions(source)
    self._tokens_ML = model.tokenizer.encode(captions, model.config.data.max_text_len)
    self._caption_features_MC = None  # a locked text tower's, computed on the first call

  def __call__(self, variables) -> dict[str, float]:
    image_emb_ND = self._model.image_embeddings(variables, self._split, self._batch_size)
    if self._model.config.data.get("cached_text", False):
      if self._caption_features_MC is None:
        self._caption_features_MC = split_caption_features(
            self._model.config, self._source, variables, self._model.tokenizer)
      # Float features, not int tokens: the text tower applies only its projection.
      text_emb_MD = self._embedder.tokens(variables, self._caption_features_MC, self._batch_size)
    else:
      text_emb_MD = self._embedder.tokens(variables, self._tokens_ML, self._batch_size)
    if not _all_finite(image_emb_ND, text_emb_MD):
      return dict.fromkeys(self.metrics, np.nan)
    metrics = retrieval_metrics(image_emb_ND, text_emb_MD, self._text_to_image_M)
    return {name: metrics[name] for name in self.metrics}


class ZeroShotEvaluator:
  """Zero-shot top-1 accuracy and macro F1 on a labelled split, from prompt templates."""

  metrics = ("top1", "macro_f1")
  tasks = ("clip",)

  def __init__(self, source, entry: ml_collections.ConfigDict, model: Model, where: str):
    self._model, self._embedder, self._batch_size = model, model.embedder, entry.batch_size
    self._class_names, self._labels_N = _class_labels(source, where)
    templates = None if entry.templates is None else list(entry.templates)
    self._prompts = class_prompts(self._class_names, templates)
    self._split = source.split
    model.eval_views(source)

  def __call__(self, variables) -> dict[str, float]:
    image_emb_ND = self._model.image_embeddings(variables, self._split, self._batch_size)
    class_weights_CD = zero_shot_weights(
        lambda texts: self._embedder.texts(variables, texts, self._batch_size), self._prompts)
    if not _all_finite(image_emb_ND, class_weights_CD):
      return dict.fromkeys(self.metrics, np.nan)
    metrics = classification_metrics(self._labels_N, self._class_names,
                                     logits_NC=zero_shot_logits(image_emb_ND, class_weights_CD))
    return {"top1": metrics["top1_accuracy"], "macro_f1": metrics["macro_f1"]}


class ClassificationEvaluator:
  """A classifier's top-1 accuracy and macro F1: on every image of a split (image classifier), or
  on every caption, labelled with its image's class (text classifier)."""

  metrics = ("top1", "macro_f1")
  tasks = ("image_classifier", "text_classifier")

  def __init__(self, source, entry: ml_collections.ConfigDict, model: Model, where: str):
    self._apply, self._batch_size = model.apply, entry.batch_size
    self._class_names, labels_N = _class_labels(source, where)
    if model.config.task == "text_classifier":
      captions, text_to_image_M = split_captions(source)
      self._inputs = model.tokenizer.encode(captions, model.config.data.max_text_len)
      self._labels_N = labels_N[text_to_image_M]
    else:
      self._inputs = normalize_images(model.eval_views(source))
      self._labels_N = labels_N

  def __call__(self, variables) -> dict[str, float]:
    logits_NC = apply_in_batches(lambda x: self._apply(variables, x), self._inputs,
                                 self._batch_size)
    if not _all_finite(logits_NC):
      return dict.fromkeys(self.metrics, np.nan)
    metrics = classification_metrics(self._labels_N, self._class_names, logits_NC=logits_NC)
    return {"top1": metrics["top1_accuracy"], "macro_f1": metrics["macro_f1"]}


EVALUATORS = {"retrieval": RetrievalEvaluator, "zeroshot": ZeroShotEvaluator,
              "classification": ClassificationEvaluator}


def _entry(evals: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """An evals entry with the defaults filled in."""
  return ml_collections.ConfigDict({**EVAL_ENTRY_DEFAULTS, **evals[name].to_dict()})


def config_errors(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with config.evals and config.best_metric, one message per problem (no data is
  read: a missing split is found when the evaluators are built)."""
  evals = config.get("evals") or ml_collections.ConfigDict()
  task = config.get("task", "clip")
  errors, produced = [], []
  for name in evals:
    where = f"evals.{name}"
    unknown = sorted(set(evals[name]) - set(EVAL_ENTRY_DEFAULTS) - {"type"})
    if unknown:
      errors.append(f"{where} has unknown field(s) {unknown}: the fields are "
                    f"{sorted(set(EVAL_ENTRY_DEFAULTS) | {'type'})}.")
      continue
    entry = _entry(evals, name)
    kind = entry.get("type")
    if kind not in EVALUATORS:
      errors.append(f"{where}.type={kind!r}: choose one of {sorted(EVALUATORS)}.")
      continue
    if task not in EVALUATORS[kind].tasks:
      errors.append(f"{where}.type={kind!r} evaluates {' or '.join(EVALUATORS[kind].tasks)} "
                    f"models, but config.task={task!r}: use one of "
                    f"{sorted(k for k, e in EVALUATORS.items() if task in e.tasks)}.")
    if entry.every < 0 or entry.batch_size <= 0:
      errors.append(f"{where}: every={entry.every} must be >= 0 (0 turns it off) and batch_size="
                    f"{entry.batch_size} positive.")
    if entry.every > 0:
      produced += [f"{name}/{metric}" for metric in EVALUATORS[kind].metrics]
  best = config.get("best_metric")
  if best and not errors and best not in produced:
    errors.append(f"best_metric={best!r} is not a figure of any evaluator that runs: choose one of "
                  f"{produced}, or None to keep no best checkpoint." if produced else
                  f"best_metric={best!r}, but no evaluator runs (config.evals): set best_metric "
                  "to None, or add an evaluator.")
  return errors


class Evaluators:
  """The evaluators of config.evals, built for one model: `run(step, variables)` at each step where
  `due(step)`."""

  def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, tokenizer: Tokenizer):
    self.num_steps = config.num_steps
    self.seconds = 0.0  # spent evaluating so far
    shared = Model(model, tokenizer, config)
    self._scheduled = []
    evals = config.get("evals") or ml_collections.ConfigDict()
    for name in evals:
      entry = _entry(evals, name)
      if entry.every == 0:
        continue
      where = f"evals.{name}"
      try:
        source = make_source(config.data, entry.split)
      except ValueError as e:  # includes the folder's DataError
        raise ConfigError(f"{where}.split={entry.split!r}: {e}") from None
      self._scheduled.append((name, entry.every, EVALUATORS[entry.type](source, entry, shared,
                                                                         where)))

  def __len__(self) -> int:
    return len(self._scheduled)

  def _due(self, step: int) -> list:
    return [(name, evaluator) for name, every, evaluator in self._scheduled
            if step % every == 0 or step == self.num_steps]

  def due(self, step: int) -> bool:
    """Whether any evaluator runs at `step` (1-based): each every `every` steps and at the last."""
    return bool(self._due(step))

  def run(self, step: int, variables) -> dict[str, float]:
    """The figures of every evaluator due at `step`, prefixed with its name ("val/rsum")."""
    start = time.perf_counter()
    figures = {f"{name}/{metric}": value for name, evaluator in self._due(step)
               for metric, value in evaluator(variables).items()}
    self.seconds += time.perf_counter() - start
    return figures
