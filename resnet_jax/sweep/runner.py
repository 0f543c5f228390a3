"""The sweep's scheduler: worker processes fed unit after unit, progress lines with an
ETA, and a failed cell reported in one line naming its log."""

import json
import os
import select
import subprocess
import time

from resnet_jax import config_lib
from resnet_jax import metrics_io
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import status as status_lib
from resnet_jax.sweep import worker as worker_lib
from resnet_jax.sweep.cells import Cell, unit_cost, unit_name, units
from resnet_jax.sweep.devices import Devices, _VISIBLE, worker_envs


class CellFailed(RuntimeError):
  """A cell's process failed for a reason other than divergence."""


def _last_line(path: str) -> str:
  """The last non-empty line of a log (a failed cell's error), or ''."""
  try:
    with open(path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return lines[-1] if lines else ''


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


def format_minutes(seconds: float) -> str:
  return f'{seconds / 60:.1f} min' if seconds < 7200 else f'{seconds / 3600:,.1f} h'


def format_duration(seconds: float) -> str:
  """format_minutes, with days beside hours past two days."""
  days = seconds / 86400
  return format_minutes(seconds) + (f' ({days:.1f} days)' if days > 2 else '')


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
        with open(os.path.join(workdir, cell.name, 'analysis.json')) as f:
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


def run_sweep(ablation, workdir: str, cells, parallel: int, command: list[str],
              together: bool = False, devices: Devices = Devices('cpu', 1),
              progress_every: float = 60.0):
  """Trains `cells` (those not finished) in `parallel` worker processes, each started as
  `command`, unit after unit; prints each unit's start and end and, every
  `progress_every` seconds, the running units' steps and the sweep's ETA."""
  status = {c: status_lib.cell_status(os.path.join(workdir, c.name)) for c in cells}
  todo = [c for c in cells if status[c] not in ('done', 'diverged')]
  print(f'{len(cells)} cells in this shard: {len(cells) - len(todo)} finished, '
        f'{len(todo)} to run.', flush=True)
  # Deepest first (longest-processing-time order): the shallow units fill in at the end,
  # so that no worker idles through the last deep one alone.
  queue = sorted(units(todo, together), key=unit_cost, reverse=True)
  n_units = len(queue)
  n_workers = min(max(parallel, 1), n_units)
  configs = {c: ablation_lib.cell_config(ablation, c) for c in todo}
  sizes = {size for config in configs.values()
           for size in (config.batch_size, config.eval_batch_size)}
  envs = worker_envs(workdir, n_workers, devices, sizes)
  var = _VISIBLE.get(devices.platform)
  if var and n_workers > 1:
    print(f'Workers\' {devices.platform.upper()} devices: '
          + '; '.join(f'{i}: {e[var]}' for i, e in enumerate(envs)), flush=True)
  workers = [Worker(workdir, i, env, command) for i, env in enumerate(envs)]
  clock, done, ran, t_start = Clock(len(workers)), 0, [], time.perf_counter()
  starting = 0.0  # The workers' seconds from their start to READY (imports, the checks).
  resumed = {unit_name(u) for u in queue if any(status[c] == 'partial' for c in u)}

  log_of = lambda unit: os.path.join(workdir, f'{unit_name(unit)}.log')
  shown = {'time': time.perf_counter(), 'steps': {}}
  steps = {c: ablation_lib.cell_steps(config) for c, config in configs.items()}
  # A unit's seeds train in step: its first cell's record tells where it stands.
  progress = lambda unit: status_lib.progress(os.path.join(workdir, unit[0].name),
                                              steps[unit[0]])

  def give_next(worker):
    if queue:
      unit = queue.pop(0)
      name = unit_name(unit)
      worker.give(unit)
      print(f'[{n_units - len(queue)}/{n_units}] started {name} (log: {name}.log)',
            flush=True)
    else:
      worker.no_more()

  def show_progress():
    """Every --progress_every seconds, if a running unit has logged a step since: each
    running unit's step and the sweep's ETA (a long cell says nothing else for hours)."""
    now = time.perf_counter()
    if now - shown['time'] < progress_every:
      return
    running = [(w, progress(w.unit)) for w in workers if w.unit]
    steps = {unit_name(w.unit): p[0] for w, p in running if p}
    if not steps or all(shown['steps'].get(k) == v for k, v in steps.items()):
      return
    shown.update(time=now, steps=steps)
    eta = clock.eta([(unit_cost(w.unit), now - w.started, p) for w, p in running],
                    [unit_cost(u) for u in queue])
    parts = [f'{unit_name(w.unit)} step {p[0]:,}/{p[1]:,}' for w, p in running if p]
    print(f'running: {", ".join(parts)}; {done}/{n_units} done'
          + (f', ETA {format_minutes(eta)}' if eta is not None else ''), flush=True)

  try:
    for i, worker in enumerate(workers):  # Each checks the configs (JAX) before any trains.
      try:
        starting += worker.wait_ready()
      except EOFError:
        worker.close()
        raise CellFailed(f'Worker {i} failed as it started (exit {worker.proc.returncode}): '
                         f'{_last_line(worker.log_path)} (log: {worker.log_path})') from None
    for worker in workers:
      give_next(worker)
    while any(w.unit for w in workers):
      show_progress()
      busy = {w.proc.stdout: w for w in workers if w.unit}
      ready, _, _ = select.select(list(busy), [], [],
                                  min(max(progress_every, 0.2), 5.0))
      for out in ready:
        worker = busy[out]
        unit, name = worker.unit, unit_name(worker.unit)
        try:
          if not worker.unit_done():
            continue
        except EOFError:  # The worker died with this unit.
          worker.close()
          log = log_of(unit)
          reason = _last_line(log)
          if not reason:  # It died before the unit began.
            log = worker.log_path
            reason = _last_line(log)
          reason = reason.removeprefix('error: ')
          raise CellFailed(f'{name} failed (exit {worker.proc.returncode}): {reason} '
                           f'(log: {log})')
        statuses = [status_lib.cell_status(os.path.join(workdir, c.name)) for c in unit]
        now = time.perf_counter()
        clock.finished(unit_cost(unit), now - worker.started, name in resumed)
        ran.append((unit, now - worker.started))
        done += 1
        eta = clock.eta([(unit_cost(w.unit), now - w.started, progress(w.unit))
                         for w in workers if w.unit and w is not worker],
                        [unit_cost(u) for u in queue])
        eta = ('ETA once a cell has run from its start' if eta is None
               else f'ETA {format_minutes(eta)}')
        print(f'{name}: {"/".join(sorted(set(statuses)))} in {now - worker.started:.0f} s; '
              f'{done}/{n_units} done, {eta}', flush=True)
        give_next(worker)
  finally:
    for worker in workers:
      if worker.unit:  # Stopped by an error or a signal: it saves a checkpoint.
        worker.proc.terminate()
      worker.close()
  if ran:
    print(time_split(workdir, ran, time.perf_counter() - t_start, len(workers), starting),
          flush=True)
