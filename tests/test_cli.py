"""The command-line tools print bad input as one line and let bugs keep their traceback."""

import sys
import types

import pytest
from absl import flags
from ml_collections import config_flags

from jclip import cli
from jclip.config.defaults import ConfigError
from jclip.data.folder import DataError
from jclip.errors import UserError
from jclip.models.pretrained import PretrainedError
from jclip.runs.checkpoint import CheckpointCorruptError, CheckpointMismatchError


def _raising(error):
  def main(argv):
    del argv
    raise error

  return main


@pytest.mark.parametrize(
  "error",
  [
    UserError("--top_k=0 must be at least 1."),
    ConfigError("batch_size=0: use at least 1."),
    DataError("captions.tsv is empty."),
    CheckpointMismatchError("another model"),
    CheckpointCorruptError("step 4 is unreadable"),
    PretrainedError("no such weights"),
    FileNotFoundError("No checkpoints in /tmp/x"),
  ],
)
def test_user_errors_exit_with_their_message_alone(error):
  with pytest.raises(SystemExit) as exited:
    cli.run_reporting_user_errors(_raising(error), ["tool"])
  assert exited.value.code == f"error: {error}"


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("params"), TypeError("a bug")])
def test_other_errors_keep_their_traceback(error):
  with pytest.raises(type(error)):
    cli.run_reporting_user_errors(_raising(error), ["tool"])


def test_only_orbax_closed_event_loop_reports_are_dropped(monkeypatch):
  """After a failed restore, TensorStore callbacks into Orbax's closed event loop are reported as
  unraisable; the scripts drop exactly those and pass every other report on."""
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
  cli.run_reporting_user_errors(lambda argv: None, ["tool"])
  passed_on = []
  monkeypatch.setattr(sys, "__unraisablehook__", passed_on.append)
  closed_loop = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("Event loop is running"))
  sys.unraisablehook(closed_loop)
  sys.unraisablehook(other)
  assert passed_on == [other]


@pytest.mark.parametrize(
  "argv, message",
  [
    (
      ["--config=configs/tiny.py", "--config.batch_sise=64"],
      "error: --config.batch_sise: the config has no such field; did you mean --config.batch_size?",
    ),
    (
      ["--config=configs/flickr8k_lit.py:minilm_frozen"],
      "error: configs/flickr8k_lit.py:minilm_frozen is not a variant of configs/flickr8k_lit.py: "
      "use one of finetune, frozen, scratch (e.g. --config=configs/flickr8k_lit.py:finetune).",
    ),
    (
      ["--config=configs/tiny.py", "--workdri=/tmp/x"],
      "error: Unknown command line flag 'workdri'. Did you mean: workdir ? (--helpfull lists every "
      "flag)",
    ),
  ],
)
def test_flag_mistakes_exit_with_one_line(argv, message, monkeypatch):
  from conftest import ROOT

  monkeypatch.chdir(ROOT)  # config paths are relative to the repository, as for train.py
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  with pytest.raises(SystemExit) as exited:
    cli.parse_flags(["train.py", *argv], flag_values)
  assert exited.value.code == message
