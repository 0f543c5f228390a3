"""The sweep's scheduler: worker processes fed unit after unit, progress lines with an
ETA; a worker that dies is replaced and its unit tried again from its checkpoint, and
what still failed is listed at the end, each with its reason and log."""

import json
import os
import select
import signal
import subprocess
import time

from resnet_jax import config_lib
from resnet_jax import metrics_io
from resnet_jax import run_dir
from resnet_jax.durations import format_minutes
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import status as status_lib
from resnet_jax.sweep import worker as worker_lib
from resnet_jax.sweep.cells import Cell, unit_cost, unit_name, units
from resnet_jax.sweep.devices import Devices, _VISIBLE, worker_envs


MAX_RETRIES = 2  # Tries of a unit after the first whose worker died with it.


class CellFailed(RuntimeError):
  """A cell's process failed for a reason other than divergence."""


def error_line(path: str, start: int = 0) -> tuple[str, bool]:
  """The error a failed unit's or worker's log ends with (its text from byte `start`: this
  try's), and whether it is the user's (worker.py's one-sentence 'error: ' line, which
  another try would repeat): that sentence, else the exception line of its last
  traceback, else '' (never a progress line)."""
  try:
    with open(path, 'rb') as f:
      f.seek(start)
      text = f.read().decode(errors='replace')
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
  except OSError:
    return '', False
  for line in reversed(lines):
    if line.startswith(worker_lib.ERROR):
      return line[len(worker_lib.ERROR):], True
  tracebacks = [i for i, line in enumerate(lines) if line.startswith('Traceback (')]
  if tracebacks:  # Its frames are indented; the exception's own line is not.
    tail = [line for line in lines[tracebacks[-1] + 1:] if not line.startswith(' ')]
    if tail:
      return tail[-1], False
  return '', False


def death_reason(returncode: int | None, log: str, start: int = 0) -> tuple[str, bool]:
  """Why a worker died: a signal by name, or its log's error line (`error_line`)."""
  if returncode is not None and returncode < 0:
    name = signal.Signals(-returncode).name
    return f'killed by {name}' + (' (out of memory?)' * (name == 'SIGKILL')), False
  line, users = error_line(log, start)
  return line or f'exit {returncode}, no error in its log', users


class Worker:
  """One worker process of the sweep, and the unit it is running."""

  def __init__(self, workdir: str, index: int, env: dict, command: list[str]):
    self.log_path = os.path.join(workdir, f'.worker{index}.log')
    self.log = open(self.log_path, 'a')
    self.proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
    self.unit, self.started, self._unit_line, self._read = None, None, b'', b''
    self.created = time.perf_counter()

  def give(self, unit: list[Cell]):
    self.unit, self.started = unit, time.perf_counter()
    self._unit_line = (','.join(c.name for c in unit) + '\n').encode()
    try:
      self.proc.stdin.write(self._unit_line)
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass  # It has died: the driver finds out when it reads its output.

  def _read_some(self):
    """Reads what the worker has written (blocks until it writes). Raises EOFError if it
    died."""
    data = os.read(self.proc.stdout.fileno(), 4096)
    if not data:
      raise EOFError
    self._read += data

  def _next_line(self) -> bytes | None:
    """The next whole reply line read so far, or None."""
    if b'\n' not in self._read:
      return None
    line, self._read = self._read.split(b'\n', 1)
    return line + b'\n'

  def wait_ready(self) -> float:
    """Blocks until the worker has started and checked every cell's config; returns the
    seconds since it was started. Raises config_lib.ConfigError with its reason if a
    config cannot run, and EOFError if it died first."""
    while (line := self._next_line()) is None:
      self._read_some()
    if line.startswith(worker_lib.ERROR.encode()):
      raise config_lib.ConfigError(line.decode().strip()[len(worker_lib.ERROR):])
    return time.perf_counter() - self.created

  def unit_done(self) -> bool:
    """Reads what the worker has written (call it when its pipe is readable): True once it
    has answered its unit's line. Raises EOFError if it died instead."""
    self._read_some()
    while (line := self._next_line()) is not None:
      if line == self._unit_line:
        return True
    return False

  def no_more(self):
    """Closes the worker's stdin: it exits once its unit is done."""
    self.unit = None
    try:
      self.proc.stdin.close()
    except BrokenPipeError:
      pass

  def close(self):
    self.no_more()
    self.proc.wait()
    self.log.close()


def eta_seconds(rate: float, running: list[float], queued: list[float], workers: int) -> float:
  """Seconds until the sweep ends: each worker finishes what `running` says is left of its
  unit (in cost units), then takes queued units in order as it frees; `rate` is a worker's
  seconds per cost unit."""
  free = sorted(max(r, 0.0) * rate for r in running)
  free += [0.0] * max(workers - len(free), 0)
  for c in queued:
    i = free.index(min(free))
    free[i] += c * rate
  return max(free, default=0.0)


class Clock:
  """The sweep's ETA, at a worker's seconds per unit of cost (depth) measured on units run
  from their first step (a resumed unit's time covers only the rest of it); until one has
  finished, at the speed the running units' progress lines give."""

  def __init__(self, workers: int):
    self.workers, self.cost, self.seconds = workers, 0, 0.0

  def finished(self, cost: int, seconds: float, resumed: bool):
    if not resumed:
      self.cost, self.seconds = self.cost + cost, self.seconds + seconds

  def eta(self, running: list[tuple[int, float, tuple | None]],
          queued: list[int]) -> float | None:
    """Seconds left, given (cost, seconds so far, progress) of each unit still running,
    progress being `status.progress`'s (step, total, seconds left) or None; None while
    nothing tells a unit's speed."""
    if not running and not queued:
      return 0.0
    if self.cost:
      rate = self.seconds / self.cost
    else:  # A whole unit's time per cost unit, from the running units' seconds per step.
      rates = [left / (total - step) * total / c for c, _, p in running if p
               for step, total, left in [p] if total > step]
      if not rates:
        return None
      rate = sum(rates) / len(rates)
    rate = max(rate, 1e-9)  # A log's ETA of 0:00:00 (tiny runs).
    left = [p[2] / rate if p else c - t / rate for c, t, p in running]
    return eta_seconds(rate, left, queued, self.workers)


def time_split(workdir: str, ran: list[tuple[list[Cell], float]], wall: float,
               workers: int, starting: float = 0.0) -> str:
  """How the workers' time went (`workers` x `wall` seconds), from the run records of
  the units `ran` ((cells, seconds from given to done)): train steps, compiling and
  evaluation (each run's record), the layer analysis (its analysis.json), the rest
  (the workers' `starting` seconds: process start and the config checks; each unit's
  data, initialisation and checkpoints) and idle workers."""
  parts = dict.fromkeys(('train steps', 'compiling', 'evaluation', 'analysis'), 0.0)
  busy = starting
  for unit, seconds in ran:
    busy += seconds
    for i, cell in enumerate(unit):
      run = [r for r in metrics_io.read_records(os.path.join(workdir, cell.name))
             if r.get('split') == 'run']
      if run:
        if i == 0:  # A unit's seeds share one program: its steps and its compilation.
          parts['train steps'] += run[-1]['train_seconds']
          parts['compiling'] += run[-1]['compile_seconds']
        parts['evaluation'] += run[-1].get('eval_seconds', 0.0)
      try:
        with open(os.path.join(workdir, cell.name, run_dir.LAYER_ANALYSIS_FILE)) as f:
          parts['analysis'] += json.load(f).get('seconds', 0.0)
      except (OSError, ValueError):
        pass
  parts['start-up, data and checkpoints'] = max(busy - sum(parts.values()), 0.0)
  total = workers * wall
  parts['idle workers'] = max(total - busy, 0.0)
  shares = ', '.join(f'{name} {seconds:,.0f} s ({100 * seconds / max(total, 1e-9):.0f}%)'
                     for name, seconds in parts.items())
  return (f'Time of the {len(ran)} unit{"s" * (len(ran) != 1)} run ({workers} '
          f'worker{"s" * (workers != 1)} x {wall:,.0f} s): {shares}.')


class Sweep:
  """The scheduler of one sweep: its queue of units, its workers and what they ran."""

  def __init__(self, workdir: str, queue: list[list[Cell]], envs: list[dict],
               command: list[str], steps: dict, resumed: set, progress_every: float):
    self.workdir, self.queue, self.envs, self.command = workdir, queue, envs, command
    self.steps, self.resumed, self.progress_every = steps, resumed, progress_every
    self.n_units, self.done, self.ran, self.failed = len(queue), 0, [], []
    self.tries = {}  # unit name -> tries so far
    self.log_start = {}  # unit name -> its log's size when this try began
    self.workers, self.starting = [], 0.0  # Workers' seconds from start to READY.
    self.clock = Clock(len(envs))
    self.shown_time, self.shown_steps = time.perf_counter(), {}
    self.t_start = time.perf_counter()

  def log_of(self, unit) -> str:
    return os.path.join(self.workdir, f'{unit_name(unit)}.log')

  def progress(self, unit):
    """A unit's seeds train in step: its first cell's record tells where it stands."""
    return status_lib.progress(os.path.join(self.workdir, unit[0].name),
                               self.steps[unit[0]])

  def start_worker(self, index: int) -> 'Worker':
    """Worker `index`, started and ready (it has checked every cell's config)."""
    worker = Worker(self.workdir, index, self.envs[index], self.command)
    try:
      self.starting += worker.wait_ready()
    except EOFError:
      worker.close()
      reason, _ = death_reason(worker.proc.returncode, worker.log_path)
      raise CellFailed(f'Worker {index} failed as it started: {reason} '
                       f'(log: {worker.log_path})') from None
    return worker

  def give_next(self, worker: 'Worker'):
    if not self.queue:
      worker.no_more()
      return
    unit = self.queue.pop(0)
    name = unit_name(unit)
    self.tries[name] = self.tries.get(name, 0) + 1
    log = self.log_of(unit)
    self.log_start[name] = os.path.getsize(log) if os.path.exists(log) else 0
    worker.give(unit)
    again = f', try {self.tries[name]}' if self.tries[name] > 1 else ''
    print(f'[{self.n_units - len(self.queue)}/{self.n_units}] started {name} '
          f'(log: {name}.log{again})', flush=True)

  def eta_text(self, now: float, skip=None) -> str:
    eta = self.clock.eta([(unit_cost(w.unit), now - w.started, self.progress(w.unit))
                          for w in self.workers if w.unit and w is not skip],
                         [unit_cost(u) for u in self.queue])
    return ('ETA once a cell has run from its start' if eta is None
            else f'ETA {format_minutes(eta)}')

  def show_progress(self):
    """Every --progress_every seconds, if a running unit has logged a step since: each
    running unit's step and the sweep's ETA (a long cell says nothing else for hours)."""
    now = time.perf_counter()
    if now - self.shown_time < self.progress_every:
      return
    running = [(w, self.progress(w.unit)) for w in self.workers if w.unit]
    steps = {unit_name(w.unit): p[0] for w, p in running if p}
    if not steps or all(self.shown_steps.get(k) == v for k, v in steps.items()):
      return
    self.shown_time, self.shown_steps = now, steps
    eta = self.clock.eta([(unit_cost(w.unit), now - w.started, p) for w, p in running],
                         [unit_cost(u) for u in self.queue])
    parts = [f'{unit_name(w.unit)} step {p[0]:,}/{p[1]:,}' for w, p in running if p]
    print(f'running: {", ".join(parts)}; {self.done}/{self.n_units} done'
          + (f', ETA {format_minutes(eta)}' if eta is not None else ''), flush=True)

  def finished(self, worker: 'Worker'):
    """`worker` answered its unit: its cells' states, the ETA, then its next unit."""
    unit, name = worker.unit, unit_name(worker.unit)
    statuses = [status_lib.cell_status(os.path.join(self.workdir, c.name)) for c in unit]
    now = time.perf_counter()
    self.clock.finished(unit_cost(unit), now - worker.started,
                        name in self.resumed or self.tries[name] > 1)
    self.ran.append((unit, now - worker.started))
    self.done += 1
    print(f'{name}: {"/".join(sorted(set(statuses)))} in {now - worker.started:.0f} s; '
          f'{self.done}/{self.n_units} done, {self.eta_text(now, skip=worker)}', flush=True)
    self.give_next(worker)

  def died(self, worker: 'Worker'):
    """`worker` died with its unit: the reason, then the unit tried again from its
    checkpoint by a new worker (up to MAX_RETRIES times, never for an error of the
    user's), or listed as failed; the other workers go on."""
    unit, name = worker.unit, unit_name(worker.unit)
    index = self.workers.index(worker)
    worker.close()
    log, start = self.log_of(unit), self.log_start[name]
    if not os.path.exists(log) or os.path.getsize(log) == start:  # Before the unit began.
      log, start = worker.log_path, 0
    reason, users = death_reason(worker.proc.returncode, log, start)
    if not users and self.tries[name] <= MAX_RETRIES:
      print(f'{name}: its worker died ({reason}); trying it again from its checkpoint '
            f'(log: {log})', flush=True)
      self.queue.insert(0, unit)
    else:
      self.failed.append(f'{name} failed: {reason} (log: {log})')
      print(f'{name} failed: {reason}; the sweep goes on (log: {log})', flush=True)
    if self.queue:  # A new worker in its place (the dead one, closed, has no unit).
      self.workers[index] = self.start_worker(index)
      self.give_next(self.workers[index])

  def run(self):
    """Runs the queue to its end; raises CellFailed listing the units that failed."""
    try:
      for i in range(len(self.envs)):  # Each checks the configs (JAX) before any trains.
        self.workers.append(self.start_worker(i))
      for worker in self.workers:
        self.give_next(worker)
      while any(w.unit for w in self.workers):
        self.show_progress()
        busy = {w.proc.stdout: w for w in self.workers if w.unit}
        ready, _, _ = select.select(list(busy), [], [],
                                    min(max(self.progress_every, 0.2), 5.0))
        for out in ready:
          worker = busy[out]
          try:
            if worker.unit_done():
              self.finished(worker)
          except EOFError:
            self.died(worker)
    finally:
      for worker in self.workers:
        if worker.unit:  # Stopped by an error or a signal: it saves a checkpoint.
          worker.proc.terminate()
        worker.close()
    if self.ran:
      print(time_split(self.workdir, self.ran, time.perf_counter() - self.t_start,
                       len(self.workers), self.starting), flush=True)
    if len(self.failed) == 1:
      raise CellFailed(self.failed[0])
    if self.failed:
      raise CellFailed(f'{len(self.failed)} units failed: ' + '; '.join(self.failed))


def run_sweep(ablation, workdir: str, cells, parallel: int, command: list[str],
              together: bool = False, devices: Devices = Devices('cpu', 1),
              progress_every: float = 60.0):
  """Trains `cells` (those not finished) in `parallel` worker processes, each started as
  `command`, unit after unit, deepest first; prints each unit's start and end and, every
  `progress_every` seconds, the running units' steps and the sweep's ETA."""
  status = {c: status_lib.cell_status(os.path.join(workdir, c.name)) for c in cells}
  todo = [c for c in cells if status[c] not in ('done', 'diverged')]
  print(f'{len(cells)} cells in this shard: {len(cells) - len(todo)} finished, '
        f'{len(todo)} to run.', flush=True)
  # Deepest first (longest-processing-time order): the shallow units fill in at the end,
  # so that no worker idles through the last deep one alone.
  queue = sorted(units(todo, together), key=unit_cost, reverse=True)
  configs = {c: ablation_lib.cell_config(ablation, c) for c in todo}
  sizes = {size for config in configs.values()
           for size in (config.batch_size, config.eval_batch_size)}
  envs = worker_envs(workdir, min(max(parallel, 1), len(queue)), devices, sizes)
  var = _VISIBLE.get(devices.platform)
  if var and len(envs) > 1:
    print(f'Workers\' {devices.platform.upper()} devices: '
          + '; '.join(f'{i}: {e[var]}' for i, e in enumerate(envs)), flush=True)
  resumed = {unit_name(u) for u in queue if any(status[c] == 'partial' for c in u)}
  steps = {c: ablation_lib.cell_steps(config) for c, config in configs.items()}
  Sweep(workdir, queue, envs, command, steps, resumed, progress_every).run()
