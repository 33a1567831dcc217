"""The checkpoints of a workdir: the latest steps and the best one, chosen by name or number, each
item restored on its own, and a checkpoint missing an item named as such."""

import dataclasses
import glob
import os
import re
import shutil

import ml_collections
import numpy as np
import pytest

from jclip.runs.checkpoint import (
  CheckpointCorruptError,
  CheckpointMismatchError,
  CheckpointNotFoundError,
  Checkpoints,
  ConfigChangedError,
  NonFiniteCheckpointError,
)


@dataclasses.dataclass
class FakeState:
  """What a checkpoint keeps of a train state: its model and what only training needs."""

  step: int
  opt_state: dict
  variables: dict

  @property
  def training(self) -> dict:
    return {"step": self.step, "opt_state": self.opt_state}


def _variables(value: float) -> dict:
  return {"params": {"dense": {"kernel": np.full((2, 3), value, np.float32)}}}


def _save(checkpoints, step, value, best=None):
  config = ml_collections.ConfigDict(dict(model=dict(width=3), tokenizer=dict(kind="x")))
  state = FakeState(np.int32(step), {"mu": np.full((2,), value, np.float32)}, _variables(value))
  checkpoints.save(step, state.variables, state.training, config, b"tokenizer bytes")
  if best is not None:
    checkpoints.save_best(step, state.variables, config, b"tokenizer bytes", "val/rsum", best)
  checkpoints.wait()


@pytest.fixture
def workdir(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=3)
  _save(checkpoints, 10, 1.0, best=0.4)
  _save(checkpoints, 20, 2.0, best=0.6)
  _save(checkpoints, 30, 3.0)  # scored lower: no new best
  return str(tmp_path)


def test_select_best_latest_or_a_number(workdir):
  checkpoints = Checkpoints(workdir, create=False)
  assert checkpoints.select().step == 20  # the best, when there is one
  assert checkpoints.select("best").reason == "the best by val/rsum = 0.6000 (latest: step 30)"
  assert checkpoints.select("latest").step == 30
  assert checkpoints.select("10").step == 10
  for which, value in (("best", 2.0), ("latest", 3.0), ("10", 1.0)):
    restored = checkpoints.variables(_variables(0.0), checkpoints.select(which))
    np.testing.assert_array_equal(restored["params"]["dense"]["kernel"], np.full((2, 3), value))
  optimizer = checkpoints.optimizer(
    {"step": np.zeros((), np.int32), "opt_state": {"mu": np.zeros(2, np.float32)}}
  )
  assert optimizer["step"] == 30
  np.testing.assert_array_equal(optimizer["opt_state"]["mu"], [3.0, 3.0])
  assert checkpoints.tokenizer_bytes(checkpoints.select("best")) == b"tokenizer bytes"


def test_unknown_steps_and_names_are_refused_with_what_there_is(workdir):
  checkpoints = Checkpoints(workdir, create=False)
  with pytest.raises(
    CheckpointNotFoundError,
    match=r"--step=15: .* steps \[10, 20, 30\] and best "
    r"step 20",
  ):
    checkpoints.select("15")
  with pytest.raises(
    CheckpointNotFoundError,
    match=r"--step='newest': use one of \('best', "
    r"'latest'\)",
  ):
    checkpoints.select("newest")


def test_best_without_a_best_checkpoint_is_refused(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  _save(checkpoints, 5, 1.0)
  assert checkpoints.select().step == 5  # falls back to the latest
  with pytest.raises(CheckpointNotFoundError, match="--step=best: .* no best checkpoint"):
    checkpoints.select("best")


def test_a_checkpoint_missing_an_item_is_named(workdir):
  step_dir = os.path.join(workdir, "checkpoints", "30")
  shutil.move(os.path.join(step_dir, "model"), os.path.join(step_dir, "state"))  # an old layout
  checkpoints = Checkpoints(workdir, create=False)
  with pytest.raises(CheckpointMismatchError, match=r"^\S+/30 lacks \['model'\] .*another version"):
    checkpoints.variables(_variables(0.0), checkpoints.select("latest"))


def test_a_workdir_without_checkpoints_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints in .* the --workdir of a train.py"):
    Checkpoints(str(tmp_path), create=False)


def test_a_checkpoint_from_before_the_image_tower_field_still_fits_the_cnn(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  _save(checkpoints, 10, 1.0)  # its config's model has no image.tower: written before the field
  current = ml_collections.ConfigDict(
    dict(model=dict(width=3, image=dict(tower="cnn")), tokenizer=dict(kind="x"))
  )
  checkpoints.check_compatible(current)  # no image section at all: the default tower's
  current.model.image.widths = (16,)
  with pytest.raises(
    CheckpointMismatchError,
    match=r"model.image.widths: checkpoint has \[32, 64, "
    r"128\], the config has \[16\]",
  ):
    checkpoints.check_compatible(current)  # ... whose widths are the defaults
  stored = ml_collections.ConfigDict(
    dict(model=dict(width=3, image=dict(widths=(8,))), tokenizer=dict(kind="x"))
  )
  state = FakeState(np.int32(20), {"mu": np.zeros((2,), np.float32)}, _variables(2.0))
  checkpoints.save(20, state.variables, state.training, stored, b"tokenizer bytes")
  checkpoints.wait()
  current.model.image.widths = (8,)
  checkpoints.check_compatible(current)  # image.tower implied "cnn"
  current.model.image.tower = "efficientnet_lite"
  with pytest.raises(CheckpointMismatchError, match="model.image.tower: checkpoint has 'cnn'"):
    checkpoints.check_compatible(current)


def test_a_checkpoint_from_before_accum_steps_meant_1_and_changing_it_changes_the_training(workdir):
  """accum_steps changes the pairs of a step, not the model: a ConfigChangedError, which
  --allow_config_change lets through, never a CheckpointMismatchError."""
  checkpoints = Checkpoints(workdir, create=False)  # its configs have no accum_steps
  config = ml_collections.ConfigDict(
    dict(model=dict(width=3), tokenizer=dict(kind="x"), accum_steps=1)
  )
  checkpoints.check_compatible(config)
  config.accum_steps = 4
  with pytest.raises(ConfigChangedError, match="accum_steps: checkpoint has 1, the config has 4"):
    checkpoints.check_compatible(config)
  checkpoints.check_compatible(config, allow_config_change=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_variables_are_never_saved(workdir, bad):
  """A NaN that got through between two log steps must not become the latest (or best)
  checkpoint."""
  checkpoints = Checkpoints(workdir, keep=3)
  with pytest.raises(
    NonFiniteCheckpointError,
    match=r"Step 40 is not saved: 1 of the model's arrays hold NaN or inf \(first: "
    r"\['params'\]\['dense'\]\['kernel'\]\).*last good checkpoint is step 30",
  ):
    _save(checkpoints, 40, bad)
  variables = _variables(bad)
  with pytest.raises(NonFiniteCheckpointError, match="Step 40 is not saved"):
    checkpoints.save_best(40, variables, ml_collections.ConfigDict(), b"", "val/rsum", 1.0)
  checkpoints.wait()
  checkpoints = Checkpoints(workdir, create=False)
  assert (checkpoints.latest_step(), checkpoints.best_step()) == (30, 20)


def _damage(workdir, step, item):
  """Truncates every data file of one item of one step, as a save cut short by a kill would."""
  for path in glob.glob(
    os.path.join(workdir, "checkpoints", str(step), item, "**", "d", "*"), recursive=True
  ):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _read_variables(checkpoints):
  return lambda selected: checkpoints.variables(_variables(0.0), selected)


def test_an_unreadable_latest_step_falls_back_to_the_newest_readable_one(workdir):
  _damage(workdir, 30, "model")
  checkpoints = Checkpoints(workdir, create=False)
  selected, variables, skipped = checkpoints.newest_readable(
    _read_variables(checkpoints), checkpoints.select("latest")
  )
  assert (selected.step, skipped) == (20, [30])
  assert re.fullmatch(
    r"the newest readable step; \S+/checkpoints/30 cannot be read \(ValueError: "
    r".*\): its save was cut short or a file is damaged",
    selected.reason,
  )
  np.testing.assert_array_equal(variables["params"]["dense"]["kernel"], np.full((2, 3), 2.0))
  # Asked for by number, the damaged step is reported, not replaced by another.
  with pytest.raises(CheckpointCorruptError, match=r"/checkpoints/30 cannot be read"):
    checkpoints.newest_readable(_read_variables(checkpoints), checkpoints.select("30"))
  checkpoints.set_aside(skipped)  # what training does before it writes step 30 again
  assert checkpoints.latest_step() == 20
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "30.unreadable"))


def test_an_empty_stored_config_is_reported_as_unreadable(workdir):
  open(os.path.join(workdir, "checkpoints", "30", "config", "metadata"), "w").close()
  checkpoints = Checkpoints(workdir, create=False)
  with pytest.raises(
    CheckpointCorruptError, match=r"/30 cannot be read \(JSONDecodeError: Expecting value"
  ):
    checkpoints.config()
  selected, config, _ = checkpoints.newest_readable(
    checkpoints.config, checkpoints.select("latest")
  )
  assert selected.step == 20 and config.model.width == 3


def test_another_models_arrays_keep_the_mismatch_message(workdir):
  checkpoints = Checkpoints(workdir, create=False)
  other = {"params": {"dense": {"kernel": np.zeros((3, 3), np.float32)}}}
  with pytest.raises(
    CheckpointMismatchError,
    match=r"step 30 .* does not fit this model \(1 "
    r"array\(s\) differ, e.g. params/dense/kernel: checkpoint \(2, 3\), model "
    r"\(3, 3\)\)",
  ):
    checkpoints.variables(other)


def test_a_changed_config_is_refused_unless_allowed_and_the_model_always(workdir):
  checkpoints = Checkpoints(workdir, create=False)
  config = ml_collections.ConfigDict(dict(model=dict(width=3), tokenizer=dict(kind="x")))
  checkpoints.check_compatible(config)  # the same config
  config.log_every, config.evals = 5, dict(val=dict(every=7))  # these change nothing trained
  config.model.remat = True  # a model field that changes the memory, not what is computed
  checkpoints.check_compatible(config)
  config.seed, config.tokenizer.kind = 1, "x"
  with pytest.raises(
    ConfigChangedError,
    match=r"trained to step 30 with another config; resuming "
    r"would continue it with:\n  - seed: checkpoint has 0, the config has 1\n"
    r"Rerun with the checkpoint's values, .* --allow_config_change",
  ):
    checkpoints.check_compatible(config)
  checkpoints.check_compatible(config, allow_config_change=True)
  config.model.width = 4
  for allow in (False, True):
    with pytest.raises(
      CheckpointMismatchError,
      match="different model.*\n  - model.width: checkpoint has 3, the config has 4",
    ):
      checkpoints.check_compatible(config, allow_config_change=allow)


def test_a_loss_change_is_refused_as_another_model_even_when_changes_are_allowed(tmp_path):
  """A checkpoint from before config.loss was trained with the softmax loss; resuming it, or a
  SigLIP checkpoint, with the other loss is refused as a different model (SigLIP's has a bias),
  which --allow_config_change does not override."""
  checkpoints = Checkpoints(str(tmp_path))
  _save(checkpoints, 10, 1.0)  # no loss field: written before it
  config = ml_collections.ConfigDict(
    dict(model=dict(width=3), tokenizer=dict(kind="x"), loss="clip")
  )
  checkpoints.check_compatible(config)  # loss implied "clip"
  config.loss = "siglip"
  for allow in (False, True):
    with pytest.raises(
      CheckpointMismatchError,
      match="different model.*\n  - loss: checkpoint has 'clip', the config has 'siglip'",
    ) as raised:
      checkpoints.check_compatible(config, allow_config_change=allow)
    assert raised.type is CheckpointMismatchError  # not ConfigChangedError, its overridable kind

  state = FakeState(np.int32(20), {"mu": np.zeros((2,), np.float32)}, _variables(2.0))
  # A SigLIP checkpoint:
  checkpoints.save(20, state.variables, state.training, config, b"tokenizer bytes")
  checkpoints.wait()
  checkpoints.check_compatible(config)
  del config["loss"]  # a config from before the field: the softmax loss
  with pytest.raises(
    CheckpointMismatchError, match="  - loss: checkpoint has 'siglip', the config has 'clip'"
  ):
    checkpoints.check_compatible(config, allow_config_change=True)
