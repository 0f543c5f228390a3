"""A sweep's worker process: it starts once and trains the units the driver names on its
stdin, one after another, each an ordinary run in its cells' directories."""

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback

from resnet_jax import config_lib
from resnet_jax import run_dir
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep.cells import Cell, unit_name

# The worker's first reply: READY, or ERROR and the reason a cell's config cannot run;
# ERROR also starts a unit's log's last line where the user's input stopped it.
READY, ERROR = 'ready\n', 'error: '


def run_cells(ablation, cells: list[Cell], workdir: str, stop=None) -> bool:
  """Trains cells that differ only in seed in this process, together (vmap) when several;
  records a diverged seed instead of raising. False if a signal stopped them (`stop`: a
  signals.StopSignal the caller has entered, else the run's own)."""
  from resnet_jax import seeds
  config = ablation_lib.cell_config(ablation, cells[0])
  results = seeds.train_seeds(config, {c.seed: os.path.join(workdir, c.name) for c in cells},
                              stop=stop)
  for cell in cells:
    result = results[cell.seed]
    if 'diverged_at' in result:
      run_dir.write_text(os.path.join(workdir, cell.name, run_dir.DIVERGED_FILE), json.dumps(
          {'step': result['diverged_at'], 'message': result['message']}))  # Whole or not.
      print(f'{cell.name} diverged at step {result["diverged_at"]}; the sweep goes on.',
            flush=True)
    elif 'stopped_at' not in result and cell.seed == min(ablation.seeds):
      # The report's layer analysis, here while the data are loaded, beside other cells.
      from resnet_jax.analysis import layers
      layers.cell_analysis(os.path.join(workdir, cell.name),
                             ablation.get('analysis_examples', 256))
  return not any('stopped_at' in r for r in results.values())


def run_logged(ablation, cells: list[Cell], workdir: str, stop=None) -> bool:
  """`run_cells` with its output going to a unit's log: an error of the user's input
  ends it as one ERROR line and exit 1 (the driver repeats the log's last line), any
  other with its traceback."""
  from resnet_jax import train
  try:
    return run_cells(ablation, cells, workdir, stop)
  except train.USER_ERRORS as e:
    print(f'{ERROR}{e}', flush=True)
    sys.exit(1)
  except BaseException:
    traceback.print_exc()
    raise


@contextlib.contextmanager
def output_to(path: str):
  """Sends this process's stdout and stderr (Python's and XLA's) to the file `path`."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for f in (fd, *saved):
      os.close(f)


def stop_when_orphaned(parent: int, every: float = 1.0):
  """Sends this worker SIGTERM once its driver (`parent`) is gone, killed or crashed: the
  running cell checkpoints at its next step and stops, so that a relaunch can start at
  once instead of finding its cells held for hours. A daemon thread's loop."""
  while os.getppid() == parent:
    time.sleep(every)
  os.kill(os.getpid(), signal.SIGTERM)


def serve(ablation, cells: list[Cell], workdir: str):
  """A worker: checks every cell's config and replies READY (or ERROR and the reason one
  cannot run, and exits), then runs the units the driver writes on stdin (cell names,
  one unit a line), each with its output in WORKDIR/UNIT.log, and answers each line once
  it is done. One process runs many units, so each skips a process's start (imports,
  data)."""
  by_name = {c.name: c for c in cells}
  reply = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)  # Anything else printed goes to the worker's log, not to the driver.
  # Ctrl-C reaches the driver too, which stops this worker with SIGTERM: the cell
  # then saves a checkpoint before it stops.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
  try:  # The models' own rules, which the driver (no JAX) left to its workers.
    for cell in cells:
      config_lib.validate(ablation_lib.cell_config(ablation, cell))
  except config_lib.ConfigError as e:
    reply.write(f'{ERROR}{e}\n')
    sys.exit(1)
  reply.write(READY)
  for line in sys.stdin:
    unit = [by_name[n] for n in line.strip().split(',')]
    with output_to(os.path.join(workdir, f'{unit_name(unit)}.log')):
      finished = run_logged(ablation, unit, workdir)
    if not finished:
      sys.exit(f'{unit_name(unit)} was stopped by a signal: its checkpoint stands.')
    reply.write(line)
