"""What train.py, eval.py and bench/ share: quiet library logs and one-line errors for bad input."""

from __future__ import annotations

import sys

from absl import flags, logging

from jclip.config import ConfigError
from jclip.runs.checkpoint import CheckpointMismatchError

# Errors caused by the user's input: shown as one message, not a traceback.
USER_ERRORS = (ConfigError, CheckpointMismatchError, FileNotFoundError, ValueError)


def quiet_library_logs() -> None:
  """Orbax and JAX log every file operation at INFO; show warnings only unless --verbosity is set."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def run_reporting_user_errors(main, argv) -> None:
  """Runs main(argv); a user error exits with status 1 and its message instead of a traceback."""
  quiet_library_logs()
  try:
    main(argv)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")
