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
from jclip.config.derived import describe_step_batch
from jclip.data.sources import check_classes, class_names_of, make_source
from jclip.evaluation import evaluators as evaluators_lib
from jclip.runs.checkpoint import BestCheckpoint, Checkpoints
from jclip.runs.metrics import MetricWriter, say
from jclip.training import inputs
from jclip.training.log_window import LogWindow, non_finite_error
from jclip.training.preemption import StopOnSignals
from jclip.training.state import checkpoint_items, frozen_mask, model_variables, start_state
from jclip.training.step import make_p_train_step, replicate, unreplicate


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
  tokenizer, state = start_state(config, workdir, train_source, allow_config_change)
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
  loop_start = time.perf_counter()
  window = LogWindow(batches, config)
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
      window.step_done()
      done = step + 1
      record = {}
      if done % config.log_every == 0 or done == config.num_steps:
        record = window.record(metrics)
        if not np.isfinite(record["loss"]):
          writer.write(done, record)  # the log shows what happened
          raise non_finite_error(record, done, checkpoints, config)
        progress.set_postfix(loss=f"{record['loss']:.3f}")
      if evaluators.due(done):
        eval_start = time.perf_counter()
        variables = unreplicate(model_variables(replicated, frozen))  # the moving average's
        figures = evaluators.run(done, variables)
        best.update(done, figures, variables)
        record.update(figures)
        window.leave_out(time.perf_counter() - eval_start)  # pairs/s counts training time only
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
