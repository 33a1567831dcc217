"""What train.py, eval.py and bench/ share: quiet library logs, one-line errors for bad input (the
flags' included: `app.run(main, flags_parser=parse_flags)`), and the persistent compilation cache
of train.py and eval.py."""

from __future__ import annotations

import difflib
import os
import re
import sys

import jax
from absl import flags, logging

from jclip.config.defaults import base, leaf_paths, to_json_dict
from jclip.errors import UserError
from jclip.models.efficientnet_weights import WeightsError
from jclip.models.pretrained import PretrainedError
from jclip.models.torch_state import StateDictError

# Errors caused by the user's input, shown as one message: jclip's UserError, a missing file, and
# the pretrained-weight errors of models/ (which imports nothing of jclip's, not even UserError).
# Anything else, a plain ValueError included, is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, PretrainedError, StateDictError, WeightsError)


def _unknown_config_fields(argv) -> list[str]:
  """The --config.<field>=... arguments that name no field of a config, each with the closest
  field: config_flags reports them as a KeyError with a traceback."""
  known = set(leaf_paths(to_json_dict(base())))
  overrides = [arg.split("=")[0][len("--config.") :] for arg in argv if arg.startswith("--config.")]
  messages = []
  for field in overrides:
    if field not in known and not any(path.startswith(field + ".") for path in known):
      close = difflib.get_close_matches(field, known, n=1)
      messages.append(
        f"--config.{field}: the config has no such field"
        + (f"; did you mean --config.{close[0]}?" if close else ".")
      )
  return messages


def _one_line(message: str) -> str:
  """absl's message for a flag that failed to parse: its first line and where the flags are
  listed; when it carries the traceback of a config file's get_config (an unknown variant), that
  exception's own message."""
  lines = [line for line in message.strip().splitlines() if line.strip()]
  if any(line.lstrip().startswith("Traceback") for line in lines):
    return re.sub(r"^\s*[\w.]+(Error|Exception): ", "", lines[-1])
  return f"{lines[0]} (--helpfull lists every flag)"


def parse_flags(argv, flag_values: flags.FlagValues = flags.FLAGS):
  """absl's flag parsing (app.run's flags_parser) with one line per mistake instead of a
  traceback or the whole --help: an unknown flag, a bad value, a mistyped --config.<field>, an
  unknown config variant (--config=configs/x.py:<variant>)."""
  try:
    return flag_values(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    unknown = _unknown_config_fields(argv)  # config_flags reports these as either
    if unknown:
      sys.exit("error: " + "\n  ".join(unknown))
    if not isinstance(e, flags.Error):
      raise
    sys.exit(f"error: {_one_line(str(e))}")


# XLA's compiled programs, kept between runs (jax's persistent compilation cache): a resume or a
# second run of a config reads its train step and model from here instead of compiling them
# again (seconds on a CPU, minutes for a large model on a TPU). Programs that compile in under a
# second are not kept (jax's jax_persistent_cache_min_compile_time_secs).
COMPILATION_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "jclip", "xla")
COMPILATION_CACHE_MAX_BYTES = 2 * 2**30  # then the least recently used programs are deleted


def define_compilation_cache_flag() -> flags.FlagHolder:
  """train.py's and eval.py's --compilation_cache (on by default)."""
  return flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep XLA's compiled programs on disk, so that a resume or a second run of the same config "
    f"skips compiling them: in $JAX_COMPILATION_CACHE_DIR when it is set, else in "
    f"{COMPILATION_CACHE_DIR} (at most {COMPILATION_CACHE_MAX_BYTES // 2**30} GiB, the least "
    "recently used deleted first). --nocompilation_cache compiles everything anew and keeps "
    "nothing.",
  )


def use_compilation_cache(enabled: bool) -> str | None:
  """Turns jax's persistent compilation cache on, in $JAX_COMPILATION_CACHE_DIR when that is set
  (jax reads it) and else in COMPILATION_CACHE_DIR, or off. Call it before anything compiles.
  Returns the cache's folder, None when off."""
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if jax.config.jax_compilation_cache_dir is None:
    jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE_DIR)
    if jax.config.jax_compilation_cache_max_size == -1:  # jax's default: no limit
      jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
  return jax.config.jax_compilation_cache_dir


def quiet_library_logs() -> None:
  """Orbax and JAX log every file operation at INFO: show warnings only, unless --verbosity is
  set."""
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
