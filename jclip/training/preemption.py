"""Stopping a run cleanly on SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C): the step in
flight finishes, its checkpoint is saved and waited for, and the run stops saying how to resume.
On several hosts, SIGTERM to any of them stops all after the same step (jax's preemption service).

    stop = StopOnSignals()
    try:
      for step in ...:
        ...one step...
        if stop.requested(step):  # on several hosts, every host agrees on the step
          ...save; raise stop.interrupted(...)
    finally:
      ...wait for the save; stop.close()

A second signal acts as it would have without this (SIGTERM kills, Ctrl-C raises KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
  """The run stopped on a signal after saving its checkpoint; the message says how to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum  # what the shell reports for a process the signal ended


class StopOnSignals:
  """From its creation to close(), SIGTERM and SIGINT only set a flag that `requested()` reads."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}
    # On several hosts jax's preemption service (started by jax.distributed.initialize) receives
    # SIGTERM itself; a handler here would hide it from that service.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

  def close(self) -> None:
    """Puts the previous handlers back."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.signum = signum
    self.close()  # a second signal stops at once
    tqdm.write(
      f"{signal.Signals(signum).name}: stopping after this step, once its checkpoint is "
      "saved (send it again to stop at once)."
    )

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`. On several hosts, whether any host received SIGTERM: every
    host asks after every step, and jax's coordination service makes them agree on the step
    without a device collective (one could interleave with the train step's own)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signum is not None

  def interrupted(self, step: int, checkpoint_dir: str, workdir: str) -> Interrupted:
    """The error to stop with once the checkpoint of `step` is saved (several hosts: SIGTERM)."""
    signum = self.signum or signal.SIGTERM
    return Interrupted(
      f"Stopped by {signal.Signals(signum).name} after step {step}, whose checkpoint is saved in "
      f"{checkpoint_dir}. To resume, run the same command again (--workdir={workdir}).",
      signum,
    )
