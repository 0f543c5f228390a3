"""Stopping on signals: SIGTERM (a preemptible VM's notice) and Ctrl-C end a run with a
checkpoint, on every process of a multi-process run at one step."""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopSignal:
  """Notes SIGTERM (how a preemptible VM is told it will stop) and a first Ctrl-C
  (SIGINT) instead of dying on them: the run saves a checkpoint and stops.

  With several processes, JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on any of them and names one step
  at which every process stops together; a Ctrl-C there is handed to it as SIGTERM,
  since one process stopping alone would leave the others waiting for it (the command
  line enters it before the data are read and the steps compiled, so that this holds
  from the start).
  """

  def __init__(self):
    self.received, self._old, self._interrupted = None, {}, False
    self.multi_process = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if not self.multi_process:
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      # Python's own Ctrl-C handler only: a sweep's worker ignores SIGINT (its driver
      # stops it with SIGTERM).
      if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:  # A second Ctrl-C interrupts at once.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      self._interrupted = True
      if self.multi_process:  # To JAX's preemption service, which tells every process.
        os.write(2, b'Ctrl-C: every process of the run stops at its next step, with a '
                 b'checkpoint (Ctrl-C again stops this one at once).\n')
        os.kill(os.getpid(), signal.SIGTERM)
        return
    self.received = signal.Signals(signum).name

  def request(self):
    """Stops the run at its next step as SIGTERM would (a SLURM task's warning that its
    time limit is near): with several processes, through JAX's preemption service."""
    if self.multi_process:
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self.received = 'SIGTERM'

  def should_stop(self, steps_run: int) -> bool:
    """Called after every step, on every process, with the steps run in this session.

    (Not the global step: the service sets the stop one step past the counts the
    processes last gave it, 0 before any, so a notice that comes before a resumed
    run's first step would otherwise name a step already behind it, never reached.)
    """
    if self.multi_process and multihost_utils.reached_preemption_sync_point(steps_run):
      self.received = 'SIGINT' if self._interrupted else 'SIGTERM'
    return self.received is not None

  def __exit__(self, *exc):
    for signum, old in self._old.items():
      signal.signal(signum, old)
