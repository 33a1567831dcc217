"""The command-line tools print bad input as one line and let bugs keep their traceback."""

import sys
import types

import pytest

from jclip import cli
from jclip.config import ConfigError
from jclip.data.folder import DataError
from jclip.errors import UserError
from jclip.models.pretrained import PretrainedError
from jclip.runs.checkpoint import CheckpointCorruptError, CheckpointMismatchError


def _raising(error):
  def main(argv):
    del argv
    raise error
  return main


@pytest.mark.parametrize("error", [
    UserError("--top_k=0 must be at least 1."), ConfigError("batch_size=0: use at least 1."),
    DataError("captions.tsv is empty."), CheckpointMismatchError("another model"),
    CheckpointCorruptError("step 4 is unreadable"), PretrainedError("no such weights"),
    FileNotFoundError("No checkpoints in /tmp/x")])
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
