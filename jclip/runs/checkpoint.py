"""Orbax checkpoints that hold everything needed to use a model, and to go on training it.

    <workdir>/checkpoints/<step>/model      the model's variables: {"params"[, "batch_stats"]}; with
                                            a moving average of the weights (optim.ema_decay), the
                                            average's
    <workdir>/checkpoints/<step>/optimizer  {"step", "opt_state"[, "raw_params"]}: what only
                                            training needs (with an average, the raw trained
                                            parameters, a list in tree order)
    <workdir>/checkpoints/<step>/config     the run's config as JSON
    <workdir>/checkpoints/<step>/tokenizer  the tokenizer's serialised model (uint8 bytes)
    <workdir>/best/<step>/                  model, config and tokenizer of the step that scored best
                                            on config.best_metric, and "best": {metric, value, step}

The latest `keep_checkpoints` steps are kept to resume from; the best one (only one) is kept to use.
Evaluation reads the model item alone, so restoring weights never builds an optimiser.

pmap keeps one copy of the state per device; the *unreplicated* state is saved, so a checkpoint does
not depend on how many devices wrote it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jclip.config.defaults import complete, to_json_dict
from jclip.errors import UserError

# The parts of the config that define the model's parameters and its inputs: a checkpoint whose
# values differ here belongs to another model. The loss is one: SigLIP's model has a bias, and its
# logits mean a probability per pair rather than a share of a softmax.
MODEL_DEFINING_FIELDS = ("model", "tokenizer", "loss")
# Fields that a resumed run may change freely: what they change is how a run is watched and kept,
# or (num_steps) how long it goes on; extending a run stretches its learning-rate schedule. A
# model field among them changes the memory and time of a step but neither the parameters nor the
# gradients (model.remat: resuming on a smaller accelerator).
RESUME_FREE_FIELDS = (
  "model.remat",
  "num_steps",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "evals",
  "best_metric",
  "data.num_threads",
  "data.tfds_dir",
  "data.feature_cache_dir",
  "data.class_names",  # recorded from the training data at every start (checks on the data hold)
)
LATEST_DIR, BEST_DIR = "checkpoints", "best"
# What eval.py's --step accepts besides a step number.
STEP_CHOICES = ("best", "latest")


class CheckpointMismatchError(UserError):
  """A workdir's checkpoint was written by a different model config."""


class ConfigChangedError(CheckpointMismatchError):
  """A workdir's checkpoint was written by the same model with other training settings."""


class CheckpointCorruptError(UserError):
  """A checkpoint's files cannot be read: its save was cut short, or a file is damaged."""


class CheckpointNotFoundError(FileNotFoundError):
  """The checkpoint asked for is not in the workdir; the message lists what is."""


class NonFiniteCheckpointError(FloatingPointError):
  """The variables to save hold NaN or inf: saving them would replace a good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Selected:
  """One checkpoint of a workdir: which folder, which step, and why it was chosen (for printing)."""

  folder: str  # LATEST_DIR or BEST_DIR
  step: int
  reason: str
  newest: bool = False  # chosen as the newest step: an unreadable one falls back to the one before


T = TypeVar("T")


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _manager_options(folder: str, keep: int, create: bool) -> ocp.CheckpointManagerOptions:
  # On several processes Orbax names its barriers after the step; the two managers often save the
  # same step at once, and two barriers of one name make the processes abort. A prefix per folder
  # keeps the names apart.
  return ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=create,
    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=folder),
  )


class Checkpoints:
  """Saves and restores the checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, LATEST_DIR)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(
        f"No checkpoints in {workdir}: expected {self.directory}. Is it the "
        "--workdir of a train.py run?"
      )
    self._managers = {
      LATEST_DIR: ocp.CheckpointManager(
        self.directory,
        options=_manager_options(LATEST_DIR, keep, create),
        item_names=("model", "optimizer", "config", "tokenizer"),
      ),
      BEST_DIR: ocp.CheckpointManager(
        os.path.join(self.workdir, BEST_DIR),
        options=_manager_options(BEST_DIR, 1, create),
        item_names=("model", "config", "tokenizer", "best"),
      ),
    }

  @classmethod
  def existing(cls, workdir: str, keep: int = 2) -> Checkpoints | None:
    """The checkpoints of a workdir that has some, else None; creates nothing."""
    if not os.path.isdir(os.path.join(workdir, LATEST_DIR)):
      return None
    return cls(workdir, keep=keep, create=False)

  def latest_step(self) -> int | None:
    return self._managers[LATEST_DIR].latest_step()

  def best_step(self) -> int | None:
    return self._managers[BEST_DIR].latest_step()

  def best_record(self) -> dict | None:
    """{"metric", "value", "step"} of the best checkpoint, or None if there is none yet."""
    step = self.best_step()
    if step is None:
      return None
    return dict(self._restore(Selected(BEST_DIR, step, ""), best=ocp.args.JsonRestore()).best)

  @staticmethod
  def _common_items(variables, config, tokenizer_bytes: bytes) -> dict:
    return dict(
      model=ocp.args.StandardSave(variables),
      config=ocp.args.JsonSave(to_json_dict(config)),
      tokenizer=ocp.args.StandardSave({"model": np.frombuffer(tokenizer_bytes, dtype=np.uint8)}),
    )

  def _check_finite(self, step: int, variables) -> None:
    # The loop checks the loss only at log steps: a NaN that got through between them must not
    # be saved over the good checkpoints.
    bad = [
      jax.tree_util.keystr(path)
      for path, x in jax.tree_util.tree_leaves_with_path(variables)
      if not np.all(np.isfinite(np.asarray(x)))
    ]
    if bad:
      raise NonFiniteCheckpointError(
        f"Step {step} is not saved: {len(bad)} of the model's arrays hold NaN or inf (first: "
        f"{bad[0]}); training diverged. Lower optim.learning_rate or check the data. The last "
        f"good checkpoint is step {self.latest_step()} in {self.directory}."
      )

  def save(
    self,
    step: int,
    variables: dict,
    training: dict,
    config: ml_collections.ConfigDict,
    tokenizer_bytes: bytes,
  ):
    """Saves a step to resume from, asynchronously: the model's `variables` and what only training
    needs (`training`: the optimiser's step and state, ...); `wait()` blocks until it is complete.
    Non-finite variables are refused (NonFiniteCheckpointError)."""
    self._check_finite(step, variables)
    self._managers[LATEST_DIR].save(
      step,
      args=ocp.args.Composite(
        optimizer=ocp.args.StandardSave(training),
        **self._common_items(variables, config, tokenizer_bytes),
      ),
    )

  def save_best(
    self,
    step: int,
    variables,
    config: ml_collections.ConfigDict,
    tokenizer_bytes: bytes,
    metric: str,
    value: float,
  ):
    """Keeps the model of `step` as the best, replacing the previous best."""
    self._check_finite(step, variables)
    self._managers[BEST_DIR].save(
      step,
      args=ocp.args.Composite(
        best=ocp.args.JsonSave({"metric": metric, "value": float(value), "step": int(step)}),
        **self._common_items(variables, config, tokenizer_bytes),
      ),
    )

  def wait(self):
    for manager in self._managers.values():
      manager.wait_until_finished()

  def select(self, which: str | int | None = None) -> Selected:
    """The checkpoint that eval.py's --step names: "best", "latest", a step number, or None (the
    best when the run kept one, else the latest)."""
    best, latest = self.best_step(), self.latest_step()
    where = f"{self.workdir} has "
    where += (
      f"checkpoints of steps {list(self._managers[LATEST_DIR].all_steps())}"
      if latest is not None
      else "no checkpoint"
    )
    where += f" and best step {best}" if best is not None else " and no best checkpoint"
    if which is None:
      which = "best" if best is not None else "latest"
    if which == "best":
      if best is None:
        raise CheckpointNotFoundError(
          f"--step=best: {where} (config.best_metric was unset, or no evaluation ran). Use "
          "--step=latest or a step number."
        )
      record = self.best_record()
      return Selected(
        BEST_DIR,
        best,
        f"the best by {record['metric']} = {record['value']:.4f} (latest: step {latest})",
      )
    if which == "latest":
      if latest is None:
        raise CheckpointNotFoundError(
          f"{where}: train first with `python train.py --config=... --workdir={self.workdir}`."
        )
      return Selected(
        LATEST_DIR,
        latest,
        "the latest" + ("" if best is None else f" (best: step {best})"),
        newest=True,
      )
    try:
      step = int(which)
    except ValueError:
      raise CheckpointNotFoundError(
        f"--step={which!r}: use one of {STEP_CHOICES} or a step number."
      ) from None
    if step in self._managers[LATEST_DIR].all_steps():
      return Selected(LATEST_DIR, step, "as asked")
    if step == best:
      return Selected(BEST_DIR, step, "as asked (the best checkpoint)")
    raise CheckpointNotFoundError(f"--step={step}: {where}.")

  def _step_dir(self, selected: Selected) -> str:
    return os.path.join(self.workdir, selected.folder, str(selected.step))

  def _restore(self, selected: Selected, **args):
    step_dir = self._step_dir(selected)
    missing = [item for item in args if not os.path.isdir(os.path.join(step_dir, item))]
    if missing:
      raise CheckpointMismatchError(
        f"{step_dir} lacks {missing} (it holds {sorted(os.listdir(step_dir))}): it was written "
        "by another version of jclip, or its save was cut short. Train into a new --workdir."
      )
    try:
      return self._managers[selected.folder].restore(selected.step, args=ocp.args.Composite(**args))
    except Exception as e:  # Orbax, TensorStore and json report damage with many error types
      cause = str(e).split("\n")[0].split(" [tensorstore_spec")[0][:300]
      raise CheckpointCorruptError(
        f"{step_dir} cannot be read ({type(e).__name__}: {cause}): its save was cut short or "
        "a file is damaged."
      ) from e

  def newest_readable(
    self, read: Callable[[Selected], T], selected: Selected
  ) -> tuple[Selected, T, list[int]]:
    """(the checkpoint read, read(it), the unreadable steps skipped). A `selected` chosen as the
    newest step falls back, step by step, to the newest one that `read` can read (its reason says
    which were skipped and why); any other choice is read as it is."""
    steps = [
      step
      for step in sorted(self._managers[LATEST_DIR].all_steps(), reverse=True)
      if selected.newest and step <= selected.step
    ]
    skipped, causes = [], []
    for step in steps or [selected.step]:
      candidate = (
        selected
        if step == selected.step
        else dataclasses.replace(
          selected, step=step, reason="the newest readable step; " + "; ".join(causes)
        )
      )
      try:
        return candidate, read(candidate), skipped
      except CheckpointCorruptError as e:
        if not steps:
          raise
        skipped.append(step)
        causes.append(str(e).rstrip("."))
    raise CheckpointCorruptError(
      f"No checkpoint in {self.directory} can be read: " + "; ".join(causes)
    )

  def set_aside(self, steps: list[int]) -> None:
    """Renames unreadable steps' folders to <step>.unreadable: kept for a look, out of the way of
    the steps that training writes again."""
    for step in steps:
      folder = os.path.join(self.directory, str(step))
      if jax.process_index() == 0:
        os.replace(folder, folder + ".unreadable")
    self._managers[LATEST_DIR].reload()

  def _latest(self, step: int | None) -> Selected:
    return self.select("latest" if step is None else step)

  def config(self, selected: Selected | None = None) -> ml_collections.ConfigDict:
    """The config stored with a checkpoint (the latest by default), with the fields added since
    it was written at their defaults (jclip.config.defaults.complete)."""
    selected = selected or self._latest(None)
    return complete(self._restore(selected, config=ocp.args.JsonRestore()).config)

  def tokenizer_bytes(self, selected: Selected | None = None) -> bytes:
    selected = selected or self._latest(None)
    restored = self._restore(selected, tokenizer=ocp.args.StandardRestore())
    return np.asarray(restored.tokenizer["model"], np.uint8).tobytes()

  def variables(self, abstract_variables, selected: Selected | None = None) -> dict:
    """The model's variables, restored into the structure (and shapes) of `abstract_variables`."""
    return self._restore_fitting(selected or self._latest(None), "model", abstract_variables)

  def optimizer(self, abstract_optimizer: dict, selected: Selected | None = None) -> dict:
    """What only training needs ({"step", "opt_state", ...}, as saved) of a checkpoint to resume
    from (the latest by default)."""
    return self._restore_fitting(selected or self._latest(None), "optimizer", abstract_optimizer)

  def _restore_fitting(self, selected: Selected, item: str, abstract_tree):
    """The item restored into `abstract_tree`'s structure; CheckpointMismatchError when its stored
    arrays have other names or shapes (another model), CheckpointCorruptError when they cannot be
    read."""
    want = _shapes(abstract_tree)
    try:
      restored = self._restore(
        selected, **{item: ocp.args.StandardRestore(_abstract(abstract_tree))}
      )[item]
      stored = _shapes(restored)
    except CheckpointCorruptError:
      # Damaged, or written by another model? The item's metadata (names and shapes) tells.
      try:
        stored = _shapes(self._managers[selected.folder].item_metadata(selected.step)[item].tree)
      except Exception:  # the metadata is damaged too
        stored = want
      if stored == want:
        raise
    if stored != want:
      differences = [
        f"{name}: checkpoint {stored.get(name)}, model {want.get(name)}"
        for name in sorted(set(stored) | set(want))
        if stored.get(name) != want.get(name)
      ]
      hint = (
        " Its optimiser state differs: a run with a locked tower saved by jclip before "
        "2026-12-03 kept state for the locked parameters too. eval.py and jclip.load still read "
        "it; to train on, start a new --workdir."
        if item == "optimizer"
        else ""
      )
      raise CheckpointMismatchError(
        f"The checkpoint of step {selected.step} in {self.workdir} does not fit this model "
        f"({len(differences)} array(s) differ, e.g. {differences[0]}).{hint}"
      )
    return restored

  def check_compatible(
    self,
    config: ml_collections.ConfigDict,
    selected: Selected | None = None,
    allow_config_change: bool = False,
  ) -> None:
    """Raises CheckpointMismatchError if a checkpoint (the latest by default) was trained with
    another model, and ConfigChangedError if with other training settings (the data, the
    optimiser, the seed, the batch size...) unless `allow_config_change`."""
    selected = selected or self._latest(None)
    differences = [
      line
      for line in _diff(to_json_dict(self.config(selected)), to_json_dict(complete(config)), "")
      if not any(
        line.split(":")[0] == free or line.startswith(free + ".") for free in RESUME_FREE_FIELDS
      )
    ]
    model = [
      line for line in differences if line.split(":")[0].split(".")[0] in MODEL_DEFINING_FIELDS
    ]
    if model:
      raise CheckpointMismatchError(
        f"{self.workdir} holds a checkpoint (step {selected.step}) of a "
        "different model, so it will not be resumed or overwritten:\n  - "
        + "\n  - ".join(model)
        + "\nUse a new --workdir, or the checkpoint's own config to resume it."
      )
    if differences and not allow_config_change:
      raise ConfigChangedError(
        f"{self.workdir} was trained to step {selected.step} with another config; resuming "
        "would continue it with:\n  - "
        + "\n  - ".join(differences)
        + "\nRerun with the checkpoint's values, use a new --workdir, or pass "
        "--allow_config_change if the change is intended."
      )


def _shapes(tree) -> dict[str, tuple]:
  """{"path/to/leaf": shape} of a tree of arrays, array metadata or shape structs."""
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _diff(stored, current, path: str) -> list[str]:
  """Human-readable differences between two JSON values: 'path: checkpoint X, config Y'."""
  if isinstance(stored, dict) and isinstance(current, dict):
    return [
      line
      for key in sorted(set(stored) | set(current))
      for line in _diff(stored.get(key), current.get(key), f"{path}.{key}" if path else key)
    ]
  if stored != current:
    return [f"{path}: checkpoint has {stored!r}, the config has {current!r}"]
  return []


class BestCheckpoint:
  """Keeps the checkpoint of the step with the highest `metric` (None: keeps none); a resumed run
  knows the best value so far from the best checkpoint itself."""

  def __init__(self, metric: str | None, checkpoints: Checkpoints, config, tokenizer_bytes: bytes):
    self.metric, self._checkpoints, self._config = metric, checkpoints, config
    self._tokenizer_bytes = tokenizer_bytes
    record = checkpoints.best_record() if metric else None
    self.value = record["value"] if record and record["metric"] == metric else -np.inf

  def update(self, step: int, figures: dict, variables) -> None:
    value = figures.get(self.metric)
    if value is not None and value > self.value:  # ties keep the earlier step
      self.value = value
      self._checkpoints.save_best(
        step, variables, self._config, self._tokenizer_bytes, self.metric, value
      )
