"""The training loop: build or resume, step with pmap, log, evaluate, checkpoint.

Re-running the same command on the same workdir resumes from the latest checkpoint: the train state
(including the optimiser's step count and moments) is restored, the tokenizer is read back from the
checkpoint, and the input pipeline restarts at the batch of the restored step.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jclip import tasks
from jclip.config.checks import validate
from jclip.config.defaults import complete
from jclip.config.derived import describe_step_batch, step_batch_size
from jclip.data.sources import check_classes, class_names_of, make_source
from jclip.evaluation import evaluators as evaluators_lib
from jclip.runs.checkpoint import BestCheckpoint, Checkpoints, Selected
from jclip.runs.metrics import MetricWriter, say
from jclip.runs.tokenizers import new_run_tokenizer, tokenizer_from_bytes
from jclip.training import inputs
from jclip.training.preemption import StopOnSignals
from jclip.training.state import (
  checkpoint_items,
  frozen_mask,
  init_state,
  model_variables,
  restore_state,
)
from jclip.training.step import make_p_train_step, replicate, unreplicate
from jclip.training.transfer import init_towers


class NonFiniteLossError(FloatingPointError):
  pass


def _resume(
  checkpoints: Checkpoints,
  config: ml_collections.ConfigDict,
  selected: Selected,
  allow_config_change: bool,
):
  """(tokenizer, train state) of a checkpoint written by this config's model."""
  checkpoints.check_compatible(config, selected, allow_config_change)
  tokenizer = tokenizer_from_bytes(config.tokenizer, checkpoints.tokenizer_bytes(selected))
  return tokenizer, restore_state(checkpoints, config, selected)


def _start(
  config: ml_collections.ConfigDict, workdir: str, train_source, allow_config_change: bool
):
  """(tokenizer, train state): the latest readable checkpoint's, or a new run's."""
  checkpoints = Checkpoints.existing(workdir, keep=config.keep_checkpoints)
  if checkpoints is None or checkpoints.latest_step() is None:
    return new_run_tokenizer(config, train_source), init_towers(init_state(config)[1], config)
  selected, (tokenizer, state), unreadable = checkpoints.newest_readable(
    lambda selected: _resume(checkpoints, config, selected, allow_config_change),
    checkpoints.select("latest"),
  )
  if unreadable:
    checkpoints.set_aside(unreadable)
  say(
    f"Resuming {workdir} from step {int(state.step)}"
    + (f", {selected.reason}; set aside as <step>.unreadable." if unreadable else ".")
  )
  return tokenizer, state


def _log_record(metrics, window_steps: int, window_start: float, wait_seconds: float, config):
  """The training metrics of a log step, with pairs/s, the time a step waited for its batch
  (mean over the window) and the temperature."""
  record = unreplicate(metrics)  # waits for the window's last step, whose time counts in it
  window_seconds = time.perf_counter() - window_start
  record["pairs_per_sec"] = window_steps * step_batch_size(config) / window_seconds
  record["data_wait_ms"] = 1e3 * wait_seconds / window_steps
  if "logit_scale" in record:
    record["temperature"] = 1.0 / record["logit_scale"]
  return record


def _non_finite(record: dict, step: int, checkpoints: Checkpoints, config) -> NonFiniteLossError:
  return NonFiniteLossError(
    f"The loss is {record['loss']} at step {step} ({int(record['skipped_updates'])} updates "
    f"skipped so far): lower optim.learning_rate (now {config.optim.learning_rate}) or check "
    f"the data. The last good checkpoint is step {checkpoints.latest_step()} in "
    f"{checkpoints.directory}."
  )


def train(config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False):
  """Trains (or resumes) until config.num_steps; returns the final, unreplicated train state.

  A resumed run must have the checkpoint's config, but for the fields that do not change what is
  trained (see checkpoint.RESUME_FREE_FIELDS); `allow_config_change` lets the others change too
  (the model never). An unreadable latest checkpoint is set aside and the one before it resumed.
  Nothing is written to a new workdir until the config, the data and the evaluators are checked.
  """
  run_start = time.perf_counter()
  config = complete(config)
  validate(config, jax.device_count(), evaluators_lib.config_errors(config))
  train_source = make_source(config.data, "train")
  if tasks.get_task(config).needs_labels:
    check_classes(train_source, config.model.num_classes, config.task)
    config.data.class_names = tuple(class_names_of(train_source))  # saved with every checkpoint
  tokenizer, state = _start(config, workdir, train_source, allow_config_change)
  start_step = int(state.step)
  if start_step >= config.num_steps:
    say(
      f"{workdir} is already trained to step {start_step} (config.num_steps="
      f"{config.num_steps}); nothing to do."
    )
    return state
  train_source = inputs.with_cached_features(config, train_source, state.variables, tokenizer)
  evaluators = evaluators_lib.Evaluators(config, tasks.build_model(config), tokenizer)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
  best = BestCheckpoint(config.best_metric, checkpoints, config, tokenizer.to_bytes())
  num_params = sum(np.size(p) for p in jax.tree.leaves(state.params))
  say(
    f"Model: {num_params / 1e6:.2f}M parameters; training steps {start_step}..."
    f"{config.num_steps} on {jax.device_count()} device(s), global batch "
    f"{describe_step_batch(config)}; {len(evaluators)} evaluator(s)"
    + (f", keeping the best checkpoint by {best.metric}." if best.metric else ".")
  )

  batches = inputs.OnDevices(
    inputs.config_train_batches(config, train_source, tokenizer, start_step)
  )
  p_train_step = make_p_train_step(config, state.params)
  frozen = frozen_mask(state.params, config)
  step_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  writer = MetricWriter(workdir, start_step, enabled=jax.process_index() == 0)
  replicated = replicate(state)
  del state  # the replicated copy is the live one from here on

  # A bar on a terminal only (disable=None): in a log file its redraws would run into the lines.
  progress = tqdm(
    range(start_step, config.num_steps),
    initial=start_step,
    total=config.num_steps,
    desc="train",
    unit="step",
    disable=None if jax.process_index() == 0 else True,
  )
  loop_start = window_start = time.perf_counter()
  window_steps, window_wait = 0, batches.wait_seconds
  stop = StopOnSignals()  # from here on, SIGTERM and SIGINT stop the run after a step and a save
  try:
    for step in progress:
      replicated, metrics = p_train_step(replicated, next(batches), step_rng)
      if step == start_step:
        jax.block_until_ready(metrics)
        say(
          f"First step done {time.perf_counter() - run_start:.1f} s after the start (reading "
          "the data, building the model and compiling included)."
        )
      window_steps += 1
      done = step + 1
      record = {}
      if done % config.log_every == 0 or done == config.num_steps:
        record = _log_record(
          metrics,
          window_steps,
          window_start,
          batches.wait_seconds - window_wait,
          config,
        )
        if not np.isfinite(record["loss"]):
          writer.write(done, record)  # the log shows what happened
          raise _non_finite(record, done, checkpoints, config)
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        window_start, window_steps, window_wait = time.perf_counter(), 0, batches.wait_seconds
      if evaluators.due(done):
        eval_start = time.perf_counter()
        variables = unreplicate(model_variables(replicated, frozen))  # the moving average's
        figures = evaluators.run(done, variables)
        best.update(done, figures, variables)
        record.update(figures)
        window_start += time.perf_counter() - eval_start  # pairs/s counts training time only
      if record:
        writer.write(done, record)
      stopping = stop.requested(done) and done < config.num_steps
      if done % config.checkpoint_every == 0 or done == config.num_steps or stopping:
        model, training = unreplicate(checkpoint_items(replicated, frozen))
        checkpoints.save(done, model, training, config, tokenizer.to_bytes())
      if stopping:
        raise stop.interrupted(done, checkpoints.directory, workdir)
  finally:
    # Also on a signal, a crash or a second signal: finish writing the checkpoint in flight.
    checkpoints.wait()
    writer.close()
    stop.close()
  if evaluators.seconds:
    total = time.perf_counter() - loop_start
    say(
      f"Evaluation took {evaluators.seconds:.1f} s of the loop's {total:.1f} s "
      f"({100 * evaluators.seconds / total:.1f}%)."
    )
  return unreplicate(replicated)
