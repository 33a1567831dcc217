"""Orbax checkpoints that hold everything needed to use a model: weights, config and tokenizer.

    <workdir>/checkpoints/<step>/state      the train state (params, optimiser state, step)
    <workdir>/checkpoints/<step>/config     the run's config as JSON
    <workdir>/checkpoints/<step>/tokenizer  the tokenizer's serialised model (uint8 bytes)

pmap keeps one copy of the state per device; the *unreplicated* state is saved, so a checkpoint does
not depend on how many devices wrote it.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jclip.config import to_json_dict

# The parts of the config that define the model's parameters and its inputs: a checkpoint whose
# values differ here belongs to another model.
MODEL_DEFINING_FIELDS = ("model", "tokenizer")


class CheckpointMismatchError(ValueError):
  """A workdir's checkpoint was written by a different model config."""


class Checkpoints:
  """Saves and restores the checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, create: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoints in {workdir}: expected {self.directory}. Is it the "
                              "--workdir of a train.py run?")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "config", "tokenizer"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, config: ml_collections.ConfigDict, tokenizer_bytes: bytes):
    """Saves asynchronously; `wait()` blocks until the files are complete."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(to_json_dict(config)),
        tokenizer=ocp.args.StandardSave(
            {"model": np.frombuffer(tokenizer_bytes, dtype=np.uint8)})))

  def wait(self):
    self._manager.wait_until_finished()

  def _restore_item(self, step: int | None, **args):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}: train first with "
                              f"`python train.py --config=... --workdir={os.path.dirname(self.directory)}`.")
    return self._manager.restore(step, args=ocp.args.Composite(**args))

  def config(self, step: int | None = None) -> ml_collections.ConfigDict:
    """The config stored with a checkpoint (the latest by default)."""
    return ml_collections.ConfigDict(self._restore_item(step, config=ocp.args.JsonRestore()).config)

  def tokenizer_bytes(self, step: int | None = None) -> bytes:
    restored = self._restore_item(step, tokenizer=ocp.args.StandardRestore())
    return np.asarray(restored.tokenizer["model"], np.uint8).tobytes()

  def state(self, abstract_state, step: int | None = None):
    """Restores the train state into the structure (and shapes) of `abstract_state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      return self._restore_item(step, state=ocp.args.StandardRestore(target)).state
    except ValueError as e:
      raise CheckpointMismatchError(
          f"The checkpoint in {self.directory} does not fit this model: {e}") from e

  def check_compatible(self, config: ml_collections.ConfigDict) -> None:
    """Raises CheckpointMismatchError if the latest checkpoint was trained with another model."""
    stored = to_json_dict(self.config())
    current = to_json_dict(config)
    differences = []
    for section in MODEL_DEFINING_FIELDS:
      differences += _diff(stored.get(section), current.get(section), section)
    if differences:
      raise CheckpointMismatchError(
          f"{os.path.dirname(self.directory)} holds a checkpoint (step {self.latest_step()}) of a "
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
