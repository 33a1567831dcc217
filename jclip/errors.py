"""The error class for bad input, which the command-line tools print as one message."""


class UserError(ValueError):
  """Input that cannot work (a flag, a config value, a data file, a checkpoint); the message names
  it and the fix. train.py, eval.py and bench/ print it without a traceback (jclip/cli.py); every
  other exception is a bug and keeps its traceback."""
