"""Orbax checkpoints that hold everything needed to use a model, and to go on training it.

    <workdir>/checkpoints/<step>/model      the model's variables: {"params"[, "batch_stats"]}
    <workdir>/checkpoints/<step>/optimizer  {"step", "opt_state"}: what only training needs
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

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jclip.config import to_json_dict

# The parts of the config that define the model's parameters and its inputs: a checkpoint whose
# values differ here belongs to another model.
MODEL_DEFINING_FIELDS = ("model", "tokenizer")
# Model fields added after checkpoints were written without them, and the value those implied.
LATER_MODEL_FIELDS = {("image", "tower"): "cnn"}
LATEST_DIR, BEST_DIR = "checkpoints", "best"
# What eval.py's --step accepts besides a step number.
STEP_CHOICES = ("best", "latest")


class CheckpointMismatchError(ValueError):
  """A workdir's checkpoint was written by a different model config."""


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


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """Saves and restores the checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, LATEST_DIR)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoints in {workdir}: expected {self.directory}. Is it the "
                              "--workdir of a train.py run?")
    self._managers = {
        LATEST_DIR: ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
            item_names=("model", "optimizer", "config", "tokenizer")),
        BEST_DIR: ocp.CheckpointManager(
            os.path.join(self.workdir, BEST_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=create),
            item_names=("model", "config", "tokenizer", "best")),
    }

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
    return dict(model=ocp.args.StandardSave(variables),
                config=ocp.args.JsonSave(to_json_dict(config)),
                tokenizer=ocp.args.StandardSave(
                    {"model": np.frombuffer(tokenizer_bytes, dtype=np.uint8)}))

  def _check_finite(self, step: int, variables) -> None:
    # The loop checks the loss only at log steps: a NaN that got through between them must not
    # be saved over the good checkpoints.
    bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(variables)
           if not np.all(np.isfinite(np.asarray(x)))]
    if bad:
      raise NonFiniteCheckpointError(
          f"Step {step} is not saved: {len(bad)} of the model's arrays hold NaN or inf (first: "
          f"{bad[0]}); training diverged. Lower optim.learning_rate or check the data. The last "
          f"good checkpoint is step {self.latest_step()} in {self.directory}.")

  def save(self, step: int, state, config: ml_collections.ConfigDict, tokenizer_bytes: bytes):
    """Saves a train state to resume from, asynchronously; `wait()` blocks until it is complete.
    Non-finite variables are refused (NonFiniteCheckpointError)."""
    self._check_finite(step, state.variables)
    self._managers[LATEST_DIR].save(step, args=ocp.args.Composite(
        optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        **self._common_items(state.variables, config, tokenizer_bytes)))

  def save_best(self, step: int, variables, config: ml_collections.ConfigDict,
                tokenizer_bytes: bytes, metric: str, value: float):
    """Keeps the model of `step` as the best, replacing the previous best."""
    self._check_finite(step, variables)
    self._managers[BEST_DIR].save(step, args=ocp.args.Composite(
        best=ocp.args.JsonSave({"metric": metric, "value": float(value), "step": int(step)}),
        **self._common_items(variables, config, tokenizer_bytes)))

  def wait(self):
    for manager in self._managers.values():
      manager.wait_until_finished()

  def select(self, which: str | int | None = None) -> Selected:
    """The checkpoint that eval.py's --step names: "best", "latest", a step number, or None (the
    best when the run kept one, else the latest)."""
    best, latest = self.best_step(), self.latest_step()
    where = f"{self.workdir} has "
    where += (f"checkpoints of steps {list(self._managers[LATEST_DIR].all_steps())}" if latest
              is not None else "no checkpoint")
    where += f" and best step {best}" if best is not None else " and no best checkpoint"
    if which is None:
      which = "best" if best is not None else "latest"
    if which == "best":
      if best is None:
        raise CheckpointNotFoundError(
            f"--step=best: {where} (config.best_metric was unset, or no evaluation ran). Use "
            "--step=latest or a step number.")
      record = self.best_record()
      return Selected(BEST_DIR, best, f"the best by {record['metric']} = {record['value']:.4f}"
                      f" (latest: step {latest})")
    if which == "latest":
      if latest is None:
        raise CheckpointNotFoundError(
            f"{where}: train first with `python train.py --config=... --workdir={self.workdir}`.")
      return Selected(LATEST_DIR, latest, "the latest" + (
          "" if best is None else f" (best: step {best})"))
    try:
      step = int(which)
    except ValueError:
      raise CheckpointNotFoundError(f"--step={which!r}: use one of {STEP_CHOICES} or a step "
                                    "number.") from None
    if step in self._managers[LATEST_DIR].all_steps():
      return Selected(LATEST_DIR, step, "as asked")
    if step == best:
      return Selected(BEST_DIR, step, "as asked (the best checkpoint)")
    raise CheckpointNotFoundError(f"--step={step}: {where}.")

  def _restore(self, selected: Selected, **args):
    step_dir = os.path.join(self.workdir, selected.folder, str(selected.step))
    missing = [item for item in args if not os.path.isdir(os.path.join(step_dir, item))]
    if missing:
      raise CheckpointMismatchError(
          f"{step_dir} lacks {missing} (it holds {sorted(os.listdir(step_dir))}): it was written "
          "by another version of jclip, or its save was cut short. Train into a new --workdir.")
    return self._managers[selected.folder].restore(selected.step, args=ocp.args.Composite(**args))

  def _latest(self, step: int | None) -> Selected:
    return self.select("latest" if step is None else step)

  def config(self, selected: Selected | None = None) -> ml_collections.ConfigDict:
    """The config stored with a checkpoint (the latest by default)."""
    selected = selected or self._latest(None)
    return ml_collections.ConfigDict(self._restore(selected, config=ocp.args.JsonRestore()).config)

  def tokenizer_bytes(self, selected: Selected | None = None) -> bytes:
    selected = selected or self._latest(None)
    restored = self._restore(selected, tokenizer=ocp.args.StandardRestore())
    return np.asarray(restored.tokenizer["model"], np.uint8).tobytes()

  def variables(self, abstract_variables, selected: Selected | None = None) -> dict:
    """The model's variables, restored into the structure (and shapes) of `abstract_variables`."""
    return self._restore_fitting(selected or self._latest(None), "model", abstract_variables)

  def optimizer(self, abstract_optimizer: dict, step: int | None = None) -> dict:
    """{"step", "opt_state"} of a checkpoint to resume from (the latest by default)."""
    return self._restore_fitting(self._latest(step), "optimizer", abstract_optimizer)

  def _restore_fitting(self, selected: Selected, item: str, abstract_tree):
    try:
      restored = self._restore(selected, **{item: ocp.args.StandardRestore(
          _abstract(abstract_tree))})
    except CheckpointMismatchError:
      raise
    except ValueError as e:
      raise CheckpointMismatchError(
          f"The checkpoint of step {selected.step} in {self.workdir} does not fit this model: "
          f"{e}") from e
    return restored[item]

  def check_compatible(self, config: ml_collections.ConfigDict) -> None:
    """Raises CheckpointMismatchError if the latest checkpoint was trained with another model."""
    stored = to_json_dict(self.config())
    current = to_json_dict(config)
    for (*parents, field), implied in LATER_MODEL_FIELDS.items():
      node = stored.get("model", {})
      for key in parents:
        node = node.get(key, {})
      node.setdefault(field, implied)
    differences = []
    for section in MODEL_DEFINING_FIELDS:
      differences += _diff(stored.get(section), current.get(section), section)
    if differences:
      raise CheckpointMismatchError(
          f"{self.workdir} holds a checkpoint (step {self.latest_step()}) of a "
          "different model, so it will not be resumed or overwritten:\n  - " +
          "\n  - ".join(differences) +
          "\nUse a new --workdir, or the checkpoint's own config to resume it.")


def _diff(stored, current, path: str) -> list[str]:
  """Human-readable differences between two JSON values: 'path: checkpoint X, config Y'."""
  if isinstance(stored, dict) and isinstance(current, dict):
    return [line for key in sorted(set(stored) | set(current))
            for line in _diff(stored.get(key), current.get(key), f"{path}.{key}")]
  if stored != current:
    return [f"{path}: checkpoint has {stored!r}, the config has {current!r}"]
  return []
