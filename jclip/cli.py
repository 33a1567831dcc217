"""What train.py, eval.py and bench/ share: quiet library logs and one-line errors for bad input."""

from __future__ import annotations

import sys

from absl import flags, logging

from jclip.errors import UserError
from jclip.models.efficientnet_weights import WeightsError
from jclip.models.pretrained import PretrainedError
from jclip.models.torch_state import StateDictError

# Errors caused by the user's input, shown as one message: jclip's UserError, a missing file, and
# the pretrained-weight errors of models/ (which imports nothing of jclip's, not even UserError).
# Anything else, a plain ValueError included, is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, PretrainedError, StateDictError, WeightsError)


def quiet_library_logs() -> None:
  """Orbax and JAX log every file operation at INFO; show warnings only unless --verbosity is set."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _drop_closed_event_loop_errors(unraisable) -> None:
  """sys.unraisablehook: when an Orbax restore fails (a damaged checkpoint, which jclip reports in
  one line and falls back from), TensorStore reads still in flight finish into the event loop Orbax
  has already closed, and each would print a harmless "Event loop is closed" traceback. Everything
  else goes to Python's own hook."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def run_reporting_user_errors(main, argv) -> None:
  """Runs main(argv); a user error exits with status 1 and its message instead of a traceback."""
  quiet_library_logs()
  sys.unraisablehook = _drop_closed_event_loop_errors
  try:
    main(argv)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")
