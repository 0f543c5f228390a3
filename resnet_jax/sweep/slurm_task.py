"""What runs inside one SLURM task of a sweep: a unit's cells, an ordinary resumable run
each in WORKDIR/CELL, with the unit's output in WORKDIR/UNIT.log as a local worker's.

SLURM warns a task before its time limit with SIGUSR2 (sbatch --signal, which
submitit sets to signal_delay_s); a preemption, `scontrol requeue` or `scancel` sends
SIGTERM. Either makes the run save a checkpoint at its next step and stop (the run's
SIGTERM path). After the warning the task requeues itself, at most `max_requeues`
times (SLURM counts them in SLURM_RESTART_COUNT); after a SIGTERM SLURM has already
decided: a requeued task resumes from that checkpoint, a cancelled one stays stopped.
"""

import os
import signal
import subprocess
import sys

from resnet_jax.sweep import cells as cells_lib
from resnet_jax.sweep import status as status_lib
from resnet_jax.sweep import worker
from resnet_jax.sweep.cells import unit_name


def _distributed() -> bool:
  """Joins the task's processes through jax.distributed where SLURM started several
  (nodes x tasks per node): JAX reads the coordinator, their count and this one's
  index from SLURM's environment. True where it did."""
  if int(os.environ.get('SLURM_NTASKS', '1')) <= 1:
    return False
  from resnet_jax import processes
  processes.join()
  return True


def _task_id() -> str:
  """This task's id as squeue and the driver name it: ARRAY_TASK for an array's."""
  env = os.environ
  if 'SLURM_ARRAY_JOB_ID' in env:
    return f'{env["SLURM_ARRAY_JOB_ID"]}_{env["SLURM_ARRAY_TASK_ID"]}'
  return env.get('SLURM_JOB_ID', '?')


def run_unit(ablation, names: list[str], workdir: str, max_requeues: int) -> str:
  """The task: trains the cells `names` of the sweep `ablation`; returns 'done', or
  'stopped' where a signal stopped it (requeued by itself after a time-limit warning).
  Exits with the log's one-line error where the user's input stops it."""
  from resnet_jax import signals
  unit = cells_lib.select(cells_lib.grid(ablation), names)
  # A cell that finished meanwhile (a task requeued as it ended) is not trained again.
  cells = [c for c in unit if status_lib.cell_status(os.path.join(workdir, c.name))
           not in ('done', 'diverged')]
  if not cells:
    return 'done'
  multi_process = _distributed()
  log = os.path.join(workdir, f'{unit_name(unit)}.log')
  first = not multi_process or int(os.environ.get('SLURM_PROCID', '0')) == 0
  warned = []
  # Entered before the data load and the compile: a signal at any time stops the run.
  with signals.StopSignal() as stop, worker.output_to(log) if first else _quiet():

    def time_limit_near(signum, frame):  # Stop as on SIGTERM, and remember why.
      del signum, frame
      warned.append(True)
      stop.request()

    signal.signal(signal.SIGUSR2, time_limit_near)
    restarts = int(os.environ.get('SLURM_RESTART_COUNT', '0'))
    print(f'SLURM job {_task_id()} on {os.uname().nodename}'
          + (f', requeued {restarts} time{"s" * (restarts != 1)}' if restarts else ''),
          flush=True)
    if worker.run_logged(ablation, cells, workdir, stop):
      return 'done'
    if warned and first:
      if restarts >= max_requeues:
        print(f'{worker.ERROR}{unit_name(unit)} is near its time limit again after '
              f'{restarts} requeue{"s" * (restarts != 1)}, all --slurm.max_requeues allows: '
              f'its checkpoint stands; give it more time (--slurm.timeout_min) or more '
              f'requeues, and run the same command.', flush=True)
        sys.exit(1)
      job = _task_id()
      print(f'Near its time limit: checkpointed, requeueing job {job}.', flush=True)
      subprocess.run(['scontrol', 'requeue', job], check=True, timeout=60)
    return 'stopped'


class _quiet:
  """A task's other processes print nothing: the first writes the unit's log."""

  def __enter__(self):
    self._saved = sys.stdout
    sys.stdout = open(os.devnull, 'w')
    return self

  def __exit__(self, *exc):
    sys.stdout.close()
    sys.stdout = self._saved
