"""The training loop: build or resume, step with pmap, log, checkpoint.

Re-running the same command on the same workdir resumes from the latest checkpoint: the train state
(including the optimiser's step count and moments) is restored, the tokenizer is read back from the
checkpoint, and the input pipeline restarts at the batch of the restored step.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jclip import config as config_lib
from jclip import tasks
from jclip.data.pipeline import train_batches
from jclip.data.sources import CachedFeatureSource, make_source
from jclip.data.tokenizer import Tokenizer
from jclip.errors import UserError
from jclip.evaluation import evaluators as evaluators_lib
from jclip.runs.checkpoint import Checkpoints, Selected
from jclip.runs.feature_cache import split_caption_features, split_features
from jclip.runs.metrics import MetricWriter
from jclip.runs.restore import build_model, init_variables
from jclip.runs.tokenizers import make_tokenizer, tokenizer_from_bytes
from jclip.training.preemption import StopOnSignals
from jclip.training.state import create_train_state
from jclip.training.step import make_p_train_step, replicate, unreplicate
from jclip.training.transfer import init_towers


def init_state(config: ml_collections.ConfigDict):
  """The model and a freshly initialised train state (the same on every host: seeded by config)."""
  model = build_model(config)
  rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  # One jitted computation: initialising leaf by leaf would compile every operation on its own.
  state = jax.jit(lambda key: create_train_state(model, config,
                                                 init_variables(model, config, key)))(rng)
  return model, state


def abstract_state(config: ml_collections.ConfigDict):
  """The train state's structure, shapes and dtypes, without allocating or computing anything."""
  return jax.eval_shape(lambda: init_state(config)[1])


def restore_state(checkpoints: Checkpoints, config: ml_collections.ConfigDict,
                  selected: Selected | None = None):
  """The train state of a checkpoint (the latest by default): its model variables and optimiser."""
  abstract = abstract_state(config)
  variables = checkpoints.variables(abstract.variables, selected)
  optimizer = checkpoints.optimizer({"step": abstract.step, "opt_state": abstract.opt_state},
                                    selected)
  return abstract.replace(params=variables["params"],
                          batch_stats=variables.get("batch_stats", abstract.batch_stats),
                          **optimizer)


def _check_labels(config: ml_collections.ConfigDict, source) -> None:
  """A classifier needs one class per label: fail before training, not in the loss."""
  class_names = getattr(source, "class_names", None)
  if class_names is None:
    raise UserError(f"config.task={config.task!r} needs class labels, but the training data has "
                     "none: a data folder needs a 'category' column in captions.tsv.")
  if len(class_names) != config.model.num_classes:
    raise UserError(f"The training data has {len(class_names)} classes {class_names} but "
                     f"config.model.num_classes={config.model.num_classes}: set "
                     f"--config.model.num_classes={len(class_names)}.")


def _new_tokenizer(config: ml_collections.ConfigDict, train_source) -> Tokenizer:
  """A CLIP started from a text classifier keeps that classifier's tokenizer (its embedding rows
  mean those pieces); otherwise the config's tokenizer is made (see jclip/runs/tokenizers.py)."""
  workdir = config.get("init", {}).get("text_classifier_workdir")
  if workdir:
    _say(f"Using the tokenizer of the text classifier in {workdir}.")
    return tokenizer_from_bytes(config.tokenizer,
                                Checkpoints(workdir, create=False).tokenizer_bytes())
  tokenizer = make_tokenizer(config, train_source)
  _say(f"Tokenizer: {config.tokenizer.kind}, {tokenizer.vocab_size} pieces.")
  return tokenizer


def step_batch_size(config: ml_collections.ConfigDict) -> int:
  """The pairs of one optimiser step, over all devices: accum_steps chunks of batch_size."""
  return config.get("accum_steps", 1) * config.batch_size


def describe_step_batch(config: ml_collections.ConfigDict) -> str:
  """The pairs of one optimiser step, for logs: "1024 (8 chunks of 128)", or "128"."""
  accum_steps = config.get("accum_steps", 1)
  chunks = f" ({accum_steps} chunks of {config.batch_size})" if accum_steps > 1 else ""
  return f"{step_batch_size(config)}{chunks}"


def config_train_batches(config: ml_collections.ConfigDict, source, tokenizer, start_step: int = 0,
                         num_threads: int | None = None):
  """This host's train batches from `start_step` on, one per optimiser step (accum_steps *
  batch_size pairs), as config.data describes."""
  data = config.data
  return train_batches(
      source, functools.partial(tokenizer.encode, max_len=data.max_text_len),
      image_size=data.image_size, crop_scale_min=data.crop_scale_min, flip=data.flip,
      captions_per_image=data.get("captions_per_image", 1),
      global_batch_size=step_batch_size(config), num_local_devices=jax.local_device_count(),
      seed=config.seed, start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_threads=data.num_threads if num_threads is None else num_threads)


def _say(message: str) -> None:
  """A progress message for the person running the job (only from the first host)."""
  if jax.process_index() == 0:
    tqdm.write(message)


def _cached_feature_source(config: ml_collections.ConfigDict, source, variables,
                           tokenizer: Tokenizer):
  """The train split with the features of its locked towers in place of their inputs
  (jclip/runs/feature_cache.py): data.cached_views views per image, and/or every caption
  (data.cached_text); computed on the first run, read back on later ones."""
  image_features = caption_features = None
  if config.data.get("cached_views", 0):
    start = time.perf_counter()
    image_features = split_features(config, source, variables, config.data.cached_views)
    _say(f"Image features: {image_features.shape[0]} images x {image_features.shape[1]} view(s) "
         f"x {image_features.shape[2]} in {time.perf_counter() - start:.1f} s; the image "
         "backbone will not run in training.")
  if config.data.get("cached_text", False):
    start = time.perf_counter()
    caption_features = split_caption_features(config, source, variables, tokenizer)
    _say(f"Caption features: {caption_features.shape[0]} captions x {caption_features.shape[1]} in "
         f"{time.perf_counter() - start:.1f} s; the text tower will not run in training.")
  return CachedFeatureSource(source, image_features, caption_features)


class NonFiniteLossError(FloatingPointError):
  pass


def _resume(checkpoints: Checkpoints, config: ml_collections.ConfigDict, selected: Selected,
            allow_config_change: bool):
  """(tokenizer, train state) of a checkpoint written by this config's model."""
  checkpoints.check_compatible(config, selected, allow_config_change)
  tokenizer = tokenizer_from_bytes(config.tokenizer, checkpoints.tokenizer_bytes(selected))
  return tokenizer, restore_state(checkpoints, config, selected)


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False):
  """Trains (or resumes) until config.num_steps; returns the final, unreplicated train state.

  A resumed run must have the checkpoint's config, but for the fields that do not change what is
  trained (see checkpoint.RESUME_FREE_FIELDS); `allow_config_change` lets the others change too
  (the model never). An unreadable latest checkpoint is set aside and the one before it resumed.
  """
  config_lib.validate(config, jax.device_count(), evaluators_lib.config_errors(config))
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
  task = tasks.get_task(config)
  train_source = make_source(config.data, "train")
  if task.needs_labels:
    _check_labels(config, train_source)

  if checkpoints.latest_step() is not None:
    selected, (tokenizer, state), unreadable = checkpoints.newest_readable(
        lambda selected: _resume(checkpoints, config, selected, allow_config_change),
        checkpoints.select("latest"))
    if unreadable:
      checkpoints.set_aside(unreadable)
    _say(f"Resuming {workdir} from step {int(state.step)}" + (
        f", {selected.reason}; set aside as <step>.unreadable." if unreadable else "."))
  else:
    tokenizer = _new_tokenizer(config, train_source)
    state = init_towers(init_state(config)[1], config)
  if config.data.get("cached_views", 0) or config.data.get("cached_text", False):
    train_source = _cached_feature_source(config, train_source, state.variables, tokenizer)
  start_step = int(state.step)
  if start_step >= config.num_steps:
    _say(f"{workdir} is already trained to step {start_step} (config.num_steps="
         f"{config.num_steps}); nothing to do.")
    return state
  evaluators = evaluators_lib.Evaluators(config, build_model(config), tokenizer)
  best = _BestCheckpoint(config.get("best_metric"), checkpoints, config, tokenizer)
  num_params = sum(np.size(p) for p in jax.tree.leaves(state.params))
  _say(f"Model: {num_params / 1e6:.2f}M parameters; training steps {start_step}..."
       f"{config.num_steps} on {jax.device_count()} device(s), global batch "
       f"{describe_step_batch(config)}; {len(evaluators)} evaluator(s)"
       + (f", keeping the best checkpoint by {best.metric}." if best.metric else "."))

  batches = iter(config_train_batches(config, train_source, tokenizer, start_step))
  p_train_step = make_p_train_step(config, state.params)
  step_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  writer = MetricWriter(workdir, start_step, enabled=is_chief)
  replicated = replicate(state)
  del state  # the replicated copy is the live one from here on

  progress = tqdm(range(start_step, config.num_steps), initial=start_step,
                  total=config.num_steps, desc="train", disable=not is_chief, unit="step")
  loop_start = window_start = time.perf_counter()
  window_steps = 0
  stop = StopOnSignals()  # from here on, SIGTERM and SIGINT stop the run after a step and a save
  try:
    for step in progress:
      replicated, metrics = p_train_step(replicated, next(batches), step_rng)
      window_steps += 1
      done = step + 1
      record = {}
      if done % config.log_every == 0 or done == config.num_steps:
        record = unreplicate(metrics)
        record["pairs_per_sec"] = window_steps * step_batch_size(config) / (
            time.perf_counter() - window_start)
        if "logit_scale" in record:
          record["temperature"] = 1.0 / record["logit_scale"]
        if not np.isfinite(record["loss"]):
          writer.write(done, record)  # the log shows what happened
          raise NonFiniteLossError(
              f"The loss is {record['loss']} at step {done} ({int(record['skipped_updates'])} "
              "updates skipped so far): lower optim.learning_rate (now "
              f"{config.optim.learning_rate}) or check the data. The last good checkpoint is step "
              f"{checkpoints.latest_step()} in {checkpoints.directory}.")
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        window_start, window_steps = time.perf_counter(), 0
      if evaluators.due(done):
        eval_start = time.perf_counter()
        variables = unreplicate(replicated.variables)
        figures = evaluators.run(done, variables)
        best.update(done, figures, variables)
        record.update(figures)
        window_start += time.perf_counter() - eval_start  # pairs/s counts training time only
      if record:
        writer.write(done, record)
      stopping = stop.requested(done) and done < config.num_steps
      if done % config.checkpoint_every == 0 or done == config.num_steps or stopping:
        checkpoints.save(done, unreplicate(replicated), config, tokenizer.to_bytes())
      if stopping:
        raise stop.interrupted(done, checkpoints.directory, workdir)
  finally:
    # Also on a signal, a crash or a second signal: finish writing the checkpoint in flight.
    checkpoints.wait()
    writer.close()
    stop.close()
  if evaluators.seconds:
    total = time.perf_counter() - loop_start
    _say(f"Evaluation took {evaluators.seconds:.1f} s of the loop's {total:.1f} s "
         f"({100 * evaluators.seconds / total:.1f}%).")
  return unreplicate(replicated)


class _BestCheckpoint:
  """Keeps the checkpoint of the step with the highest `metric` (None: keeps none); a resumed run
  knows the best value so far from the best checkpoint itself."""

  def __init__(self, metric: str | None, checkpoints: Checkpoints, config, tokenizer: Tokenizer):
    self.metric, self._checkpoints, self._config = metric, checkpoints, config
    self._tokenizer_bytes = tokenizer.to_bytes()
    record = checkpoints.best_record() if metric else None
    self.value = record["value"] if record and record["metric"] == metric else -np.inf

  def update(self, step: int, figures: dict, variables) -> None:
    value = figures.get(self.metric)
    if value is not None and value > self.value:  # ties keep the earlier step
      self.value = value
      self._checkpoints.save_best(step, variables, self._config, self._tokenizer_bytes,
                                  self.metric, value)
