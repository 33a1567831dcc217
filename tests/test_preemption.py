"""StopOnSignals on its own (tests/test_train.py runs it in train.py, in a subprocess): the first
signal only sets the flag and gives the signal back, so that a second one acts as usual."""

import os
import signal

from jclip.training.preemption import StopOnSignals


def test_the_first_signal_sets_the_flag_and_a_second_would_act_as_usual():
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  stop = StopOnSignals()
  try:
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line
    assert stop.requested(1)
    assert {sig: signal.getsignal(sig) for sig in previous} == previous
  finally:
    stop.close()
  error = stop.interrupted(3, "/w/checkpoints", "/w")
  assert error.exit_code == 143
  assert str(error) == (
    "Stopped by SIGTERM after step 3, whose checkpoint is saved in "
    "/w/checkpoints. To resume, run the same command again (--workdir=/w)."
  )
