"""Runs the depth ablation grid, resumably, then writes the report.

python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=runs/ablation
Every cell is an ordinary resnet_jax run in WORKDIR/CELL, trained by one of
--parallel worker processes (each runs cell after cell). Rerunning skips finished
cells and resumes unfinished ones; --shard_index/--num_shards run one slice of the
grid (spread it over machines); --dry_run lists the cells; --estimate times their
steps on this machine; --report_only rewrites the report from whatever cells exist.
"""

import collections
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import traceback
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from resnet_jax import cli
from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import run_dir

config_flags.DEFINE_config_file('config', None, 'configs/ablation.py[:PRESET].',
                                lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the cells and their commands only.')
_SHARD_INDEX = flags.DEFINE_integer('shard_index', 0, 'Which slice of the grid to run.',
                                    lower_bound=0)
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Into how many slices to cut the grid.',
                                   lower_bound=1)
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Cells run at once, by as many worker '
                                 'processes (2 is faster on a 2-core CPU).', lower_bound=1)
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only (re)write the report.')
_VMAP_SEEDS = flags.DEFINE_enum(
    'vmap_seeds', 'auto', ['auto', 'on', 'off'], 'Train the seeds of each (depth, net) in '
    'one program with jax.vmap: faster on GPUs and TPUs, slower on CPUs; auto = on where '
    'the default JAX backend is not the CPU.')
_CELLS = flags.DEFINE_list('cells', None, 'Run these cells (seeds of one depth and net) in '
                           'this process, and nothing else (what --dry_run prints).')
_PROGRESS_EVERY = flags.DEFINE_float(
    'progress_every', 60.0, 'Seconds between the lines that give each running cell\'s '
    'step and the sweep\'s ETA (printed when a cell has logged a step since the last).',
    lower_bound=0)
_ESTIMATE = flags.DEFINE_bool(
    'estimate', False, 'Time a few train steps of each depth and net on this machine (on '
    'random batches of the cells\' shapes: no data needed) and print how long the grid '
    'would train here, and what a sweep under way in --workdir has left; nothing is '
    'written.')
_WORKER = flags.DEFINE_bool('worker', False, 'Run the units named on stdin (internal: '
                            'the sweep\'s worker processes).')
flags.mark_flags_as_required(['config', 'workdir'])

class CellFailed(RuntimeError):
  """A cell's process failed for a reason other than divergence."""


@dataclasses.dataclass(frozen=True)
class Cell:
  depth: int
  shortcut: str
  seed: int

  @property
  def name(self) -> str:
    kind = 'plain' if self.shortcut == 'none' else f'resnet{self.shortcut}'
    return f'{kind}-{self.depth}-seed{self.seed}'


def _repeated(items: list) -> list:
  """The items that appear earlier in `items` too, in order."""
  return [v for i, v in enumerate(items) if v in items[:i]]


# Run config keys the grid sets in each cell, with the ablation key that gives them.
GRID_KEYS = {'model.depth': 'depths', 'model.shortcut': 'shortcuts', 'seed': 'seeds'}


def grid(ablation) -> list[Cell]:
  """Every cell of the sweep, shallow first so that early results come early; a config
  that is not an ablation's, or holds values of the wrong type, is refused in one line."""
  if 'model' in ablation and 'depths' not in ablation:
    raise config_lib.ConfigError(
        'This is the config of a single run: the sweep takes configs/ablation.py:PRESET '
        '(a single run: python -m resnet_jax.main).')
  missing = [key for key in ('run_config', 'depths', 'seeds', 'shortcuts', 'exclude',
                             'overrides') if key not in ablation]
  if missing:
    raise config_lib.ConfigError(f'The ablation config has no {missing[0]!r}: start from '
                                 'a preset of configs/ablation.py.')
  values = {}
  for key in ('depths', 'seeds', 'shortcuts', 'exclude'):
    kind = int if key in ('depths', 'seeds') else str
    wrong = [v for v in ablation[key] if not isinstance(v, kind) or isinstance(v, bool)]
    if wrong:
      example = dict(depths='20,32', seeds='0,1', shortcuts='none,A', exclude='none-1202')
      raise config_lib.ConfigError(
          f'config.{key} holds {wrong[0]!r}: give {"names" if kind is str else "integers"}, '
          f'as in --config.{key}={example[key]}.')
    # Names arrive from the command line as one string: ('none,A',) for none,A.
    values[key] = [part.strip() for v in ablation[key] for part in v.split(',')
                   if part.strip()] if kind is str else list(ablation[key])
    repeated = _repeated(values[key]) if key != 'exclude' else []
    if repeated:  # Two runs of one cell would share a directory.
      raise config_lib.ConfigError(f'config.{key} repeats {repeated[0]!r}: give each '
                                   f'value once.')
  for key, flag in GRID_KEYS.items():
    value = ablation.overrides
    for part in key.split('.'):
      value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
    if value is not None:
      raise config_lib.ConfigError(
          f'config.overrides.{key} would give every cell one {key.split(".")[-1]}: the grid '
          f'sets each cell\'s; give --config.{flag} instead.')
  from resnet_jax import models
  for name in values['exclude']:
    shortcut, _, depth = name.rpartition('-')
    if shortcut not in models.SHORTCUTS or not depth.isdigit():
      raise config_lib.ConfigError(
          f'config.exclude holds {name!r}: name each (shortcut, depth) to leave out as '
          f'SHORTCUT-DEPTH, with a shortcut of {", ".join(models.SHORTCUTS)} (the plain '
          f'net\'s is none), as in --config.exclude=none-1202,A-110.')
  cells = [Cell(d, s, seed) for d in values['depths'] for seed in values['seeds']
           for s in values['shortcuts'] if f'{s}-{d}' not in values['exclude']]
  if not cells:
    raise config_lib.ConfigError('The grid has no cells: config.depths, config.seeds and '
                                 'config.shortcuts each need a value, and config.exclude '
                                 'must leave a cell.')
  return cells


def check_shard(index: int, count: int):
  if count < 1 or not 0 <= index < count:
    raise config_lib.ConfigError(f'--shard_index {index} must be in [0, --num_shards '
                                 f'{count}).')


def shard(cells, index: int, count: int, together: bool = False):
  """Slice `index` of `count`, balanced by depth (a cell's time grows with it): largest
  first onto the least loaded slice. With `together` (seeds vmapped, --vmap_seeds) the
  items are whole (depth, net) groups, one program each, while there are at least as
  many groups as slices; else single cells. It depends on these arguments alone, so
  every machine that resolves --vmap_seeds alike agrees."""
  check_shard(index, count)
  items = units(cells, together)
  if len(items) < count:
    items = [[c] for c in cells]
  loads, mine = [0] * count, set()
  for item in sorted(items, key=lambda u: -unit_cost(u)):  # Stable: ties in grid order.
    least = loads.index(min(loads))
    loads[least] += unit_cost(item)
    if least == index:
      mine.update(item)
  return [c for c in cells if c in mine]  # In grid order: shallow first.


def load_config_file(name: str):
  path = name if os.path.isabs(name) else os.path.join(config_lib.CONFIG_DIR, name)
  spec = importlib.util.spec_from_file_location(f'resnet_jax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def merge(config, overrides):
  """Recursively sets `overrides` into `config`, but for unset (None) placeholders;
  unknown keys are an error."""
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in config:
      raise config_lib.ConfigError(f'The ablation override {key!r} is not a run config key.')
    if isinstance(value, ml_collections.ConfigDict):
      merge(config[key], value)
    else:
      config[key] = value
  return config


def cell_config(ablation, cell: Cell):
  """The run config of one cell: run_config called for its depth and shortcut, overridden."""
  arg = f'depth={cell.depth},' + ('plain' if cell.shortcut == 'none'
                                  else f'shortcut={cell.shortcut}')
  try:
    config = load_config_file(ablation.run_config).get_config(arg)
  except ValueError as e:  # The run config's own one-line refusal of this cell's argument.
    raise config_lib.ConfigError(f'{cell.name}: {ablation.run_config}: {e}') from e
  merge(config, ablation.overrides)
  config.seed = cell.seed
  return config


def _set_only(tree: dict) -> dict:
  """`tree` without its unset (None) leaves, nor the sub-trees left empty."""
  out = {}
  for key, value in tree.items():
    value = _set_only(value) if isinstance(value, dict) else value
    if value not in (None, {}):
      out[key] = value
  return out


def saved_ablation(ablation, data_name: str) -> ml_collections.ConfigDict:
  """The sweep's config as ablation.json keeps it for the report: the overrides it sets.
  Says so where the report will leave out the paper's errors, of another data set."""
  from experiments import report
  saved = json.loads(ablation.to_json_best_effort())
  saved['overrides'] = _set_only(saved['overrides'])
  table = report.paper_table_name(saved.get('paper_table', ''))
  if table and not report.paper_table_for(saved, data_name):
    print(f'The cells train on {data_name}: the report leaves out the paper\'s errors, which '
          f'are of {report.PAPER_DATA[table]}.', flush=True)
  return ml_collections.ConfigDict(saved)


def cell_status(workdir: str) -> str:
  """'done' (its run's last record is whole), 'diverged', 'partial' (has checkpoints: its
  run resumes, and redoes a last record a kill cut short) or 'new'."""
  if os.path.exists(os.path.join(workdir, 'diverged.json')):
    return 'diverged'
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if '"split": "run"' in line:
          try:
            json.loads(line)
            return 'done'
          except ValueError:
            pass
  return 'partial' if os.path.isdir(os.path.join(workdir, 'checkpoints')) else 'new'


def check_cell_configs(ablation, cells: list[Cell], workdir: str):
  """Refuses a sweep directory whose cells ran with other configs: the sweep would skip
  them as finished and report another experiment under this one's name."""
  for cell in cells:
    path = os.path.join(workdir, cell.name, 'config.json')
    if not os.path.exists(path) or not run_dir.holds_results(os.path.join(workdir, cell.name)):
      continue  # An attempt that kept nothing: the cell's run replaces its config.
    new = json.loads(cell_config(ablation, cell).to_json_best_effort())
    try:
      with open(path) as f:
        changes = config_lib.config_changes(json.load(f), new)
    except ValueError:
      changes = ['config.json: unreadable']
    if changes:
      raise config_lib.ConfigError(
          f'{os.path.join(workdir, cell.name)} holds a run of another config '
          f'({config_lib.describe_changes(changes)}): '
          f'give this sweep a new --workdir (or move that cell away to run it again).')


def check_unit(cells: list[Cell]):
  """Refuses --cells that one process cannot train: it trains the seeds of one depth and
  net, each once, with that depth and net's config."""
  if len({(c.depth, c.shortcut) for c in cells}) > 1:
    raise config_lib.ConfigError(
        f'--cells={",".join(c.name for c in cells)} mixes depths or nets: one command '
        'trains the seeds of one depth and net; give the others commands of their own '
        '(--dry_run lists them).')
  repeated = _repeated(cells)
  if repeated:
    raise config_lib.ConfigError(f'--cells names {repeated[0].name} twice: name each cell '
                                 'once.')


def run_cells(ablation, cells: list[Cell], workdir: str) -> bool:
  """Trains cells that differ only in seed in this process, together (vmap) when several;
  records a diverged seed instead of raising. False if a signal stopped them."""
  from resnet_jax import train
  config = cell_config(ablation, cells[0])
  results = train.train_seeds(config, {c.seed: os.path.join(workdir, c.name) for c in cells})
  for cell in cells:
    result = results[cell.seed]
    if 'diverged_at' in result:
      run_dir.write_text(os.path.join(workdir, cell.name, 'diverged.json'), json.dumps(
          {'step': result['diverged_at'], 'message': result['message']}))  # Whole or not.
      print(f'{cell.name} diverged at step {result["diverged_at"]}; the sweep goes on.',
            flush=True)
    elif 'stopped_at' not in result and cell.seed == min(ablation.seeds):
      # The report's layer analysis, here while the data are loaded, beside other cells.
      from experiments import analysis
      analysis.cell_analysis(os.path.join(workdir, cell.name),
                             ablation.get('analysis_examples', 256))
  return not any('stopped_at' in r for r in results.values())


class Devices(NamedTuple):
  """The devices a cell's process sees: JAX's platform ('cpu', 'cuda', 'rocm', 'tpu')
  and how many."""
  platform: str
  count: int


_PROBE = """
import jax
platform = jax.default_backend()
if platform == 'gpu':
  version = jax.local_devices()[0].client.platform_version.lower()
  platform = 'rocm' if 'rocm' in version else 'cuda'
print(platform, jax.local_device_count())
"""


def probe_devices() -> Devices:
  """This machine's devices, asked of JAX in a short-lived process, so that this driver
  never holds the accelerator its cells need."""
  out = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True,
                       timeout=300)
  try:
    platform, count = out.stdout.split()[-2:]
    return Devices(platform, int(count))
  except ValueError:  # JAX failed to start: the cells will say why.
    return Devices('cpu', 1)


def seeds_together(choice: str, devices: Devices, streamed: str = '') -> bool:
  """Resolves --vmap_seeds: 'auto' is on wherever the cells' devices are not the CPU,
  but never for a streamed data set (`streamed` names it: ImageNet), whose batches
  come one seed a process."""
  if streamed:
    if choice == 'on':
      raise config_lib.ConfigError(
          f'--vmap_seeds=on: seeds train together only on an in-memory data set, not '
          f'the streamed {streamed}: use --vmap_seeds=auto or off.')
    return False
  if choice != 'auto':
    return choice == 'on'
  return devices.platform != 'cpu'


def check_parallel(parallel: int, devices: Devices):
  """Refuses more workers than a TPU VM can serve (its chips take one process)."""
  if devices.platform == 'tpu' and parallel > 1:
    raise config_lib.ConfigError(
        f'--parallel={parallel} on a TPU VM: its TPU serves one process at a time, so '
        'run --parallel=1 (each depth and net then trains its seeds together in one '
        'program), or spread the grid over several VMs with --shard_index/--num_shards.')


def units(todo: list[Cell], together: bool) -> list[list[Cell]]:
  """The processes to run: one per cell, or one per (depth, net) with its seeds."""
  if not together:
    return [[c] for c in todo]
  groups = {}
  for cell in todo:
    groups.setdefault((cell.depth, cell.shortcut), []).append(cell)
  return list(groups.values())


def unit_cost(unit: list[Cell]) -> int:
  """A unit's cost in layers: a cell's time grows with its depth."""
  return sum(c.depth for c in unit)


def unit_name(unit: list[Cell]) -> str:
  if len(unit) == 1:
    return unit[0].name
  return unit[0].name.rsplit('-seed', 1)[0] + '-seeds' + '+'.join(str(c.seed) for c in unit)


def driver_command(python: str) -> list[str]:
  """This command as its workers and the dry run's lines run it: without the driver's own
  flags."""
  return [python, '-m', 'experiments.depth_ablation', *passed_flags(sys.argv[1:])]


def unit_command(unit: list[Cell]) -> str:
  """The shell line that runs `unit` alone (what --dry_run prints, for a job array)."""
  return shlex.join(driver_command('python') + [f'--cells={",".join(c.name for c in unit)}'])


# The driver's own flags, which its workers and the dry run's commands do not take.
_DRIVER_FLAGS = ('parallel', 'dry_run', 'shard_index', 'num_shards', 'vmap_seeds', 'cells',
                 'worker', 'progress_every', 'estimate')


def passed_flags(argv: list[str]) -> list[str]:
  """The arguments of `argv` (this command's) that a cell's or a worker's process shares:
  all but the driver's own flags, given as `--flag=value`, `--flag value` or `--noflag`."""
  out, skip_value = [], False
  for arg in argv:
    if skip_value:
      skip_value = False
      continue
    name = arg.lstrip('-').split('=', 1)[0] if arg.startswith('-') else ''
    if name.startswith('no') and name[2:] in _DRIVER_FLAGS:
      name = name[2:]
    if name in _DRIVER_FLAGS:
      skip_value = '=' not in arg and not flags.FLAGS[name].boolean
      continue
    out.append(arg)
  return out


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


def serve(ablation, cells: list[Cell], workdir: str):
  """A worker: runs the units the driver writes on stdin (cell names, one unit a line),
  each with its output in WORKDIR/UNIT.log, and answers each line once it is done.
  One process runs many units, so each skips a process's start (imports, data)."""
  from resnet_jax import train
  by_name = {c.name: c for c in cells}
  reply = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)  # Anything else printed goes to the worker's log, not to the driver.
  # Ctrl-C reaches the driver too, which stops this worker with SIGTERM: the cell
  # then saves a checkpoint before it stops.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  for line in sys.stdin:
    unit = [by_name[n] for n in line.strip().split(',')]
    with output_to(os.path.join(workdir, f'{unit_name(unit)}.log')):
      try:
        finished = run_cells(ablation, unit, workdir)
      except train.USER_ERRORS as e:  # One sentence: the driver repeats the log's last line.
        print(f'error: {e}', flush=True)
        sys.exit(1)
      except BaseException:
        traceback.print_exc()
        raise
    if not finished:
      sys.exit(f'{unit_name(unit)} was stopped by a signal: its checkpoint stands.')
    reply.write(line)


def cell_steps(config) -> int:
  """The steps of a cell's run, from its config and its data set's known size (no data
  read)."""
  from resnet_jax import train
  spec = datasets.get_spec(config.data.name)
  held_out = (spec.validation_size if config.data.validation_size < 0
              else config.data.validation_size)
  return train.steps_for(config, (spec.train_examples - held_out) // config.batch_size)


def steps_behind(cell_dir: str, status: str, steps: int) -> int:
  """The steps of its `steps` a cell of `status` has behind it: all when finished (or
  diverged: the sweep does not run it again), its newest checkpoint's when partly
  trained, else 0."""
  if status == 'partial':
    return min(max(run_dir.saved_steps(cell_dir), default=0), steps)
  return steps if status in ('done', 'diverged') else 0


def estimate(ablation, cells: list[Cell], together: bool, steps: int = 5,
             workdir: str | None = None) -> tuple[float, float]:
  """Times `steps` train steps of each depth and net's program here, as the sweep would
  compile it (its seeds vmapped with `together`), on random batches of its cells'
  shapes; prints each and returns the seconds the cells' steps would take here, one
  program after another, and those left after what the cells in `workdir` have run."""
  import jax
  from experiments import benchmark
  groups = units(cells, together=True)  # Seeds differ in nothing a step's time sees.
  print(f'Timing the train step of each depth and net ({len(groups)}) on '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s): {steps} '
        f'step{"s" * (steps != 1)} after compiling, on random batches (no data read).',
        flush=True)
  status = {c: cell_status(os.path.join(workdir, c.name)) if workdir else 'new'
            for c in cells}
  under_way = any(s != 'new' for s in status.values())
  total = left = 0.0
  for i, group in enumerate(groups, 1):
    config = cell_config(ablation, group[0])
    spec = datasets.get_spec(config.data.name)
    shape = spec.image_shape if spec.in_memory else (
        (config.data.image_size,) * 2 + spec.image_shape[-1:])
    per_program = len(group) if together else 1
    timed = benchmark.time_train_step(config, shape, spec.num_classes, per_program, steps,
                                      warmup=1)
    n = cell_steps(config)
    seconds = timed['step_s'] * n * (len(group) // per_program)
    behind = [steps_behind(os.path.join(workdir, c.name), status[c], n) if under_way else 0
              for c in group]
    unfinished = [b for b in behind if b < n]
    if not unfinished:
      to_run = 0
    elif per_program > 1:  # Its unfinished seeds train together from their common step.
      to_run = n - min(unfinished)
    else:
      to_run = sum(n - b for b in unfinished)
    total += seconds
    left += timed['step_s'] * to_run
    how = (f'{len(group)} seeds in one program' if per_program > 1
           else f'{len(group)} seed{"s" * (len(group) > 1)}, one after another')
    print(f'[{i}/{len(groups)}] {unit_name(group[:1]).rsplit("-seed", 1)[0]} ({how}): '
          f'{timed["step_s"] * 1e3:,.0f} ms a step (compiled in {timed["compile_s"]:.1f} '
          f's) x {n:,} steps{f" x {len(group)}" if per_program == 1 < len(group) else ""}'
          f' = {format_minutes(seconds)}'
          + (f'; {to_run:,} steps left, {format_minutes(timed["step_s"] * to_run)}'
             if under_way else ''), flush=True)
  return total, left


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

  def __init__(self, workdir: str, index: int, env: dict):
    self.log_path = os.path.join(workdir, f'.worker{index}.log')
    self.log = open(self.log_path, 'a')
    self.proc = subprocess.Popen(
        driver_command(sys.executable) + ['--worker'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
    self.unit, self.started, self._line, self._read = None, None, b'', b''

  def give(self, unit: list[Cell]):
    self.unit, self.started = unit, time.perf_counter()
    self._line = (','.join(c.name for c in unit) + '\n').encode()
    try:
      self.proc.stdin.write(self._line)
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass  # It has died: the driver finds out when it reads its output.

  def unit_done(self) -> bool:
    """Reads what the worker has written: True once it has answered its unit's line.
    Raises EOFError if it died instead."""
    data = os.read(self.proc.stdout.fileno(), 4096)
    if not data:
      raise EOFError
    self._read += data
    while b'\n' in self._read:
      line, self._read = self._read.split(b'\n', 1)
      if line + b'\n' == self._line:
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


# The progress line a run prints at each log step (resnet_jax.train): step, total, ETA.
_PROGRESS_RE = re.compile(r'^step (\d+)/(\d+) \|.*\| ETA (\d+):(\d\d):(\d\d)$')


def unit_progress(log_path: str, start: int = 0) -> tuple[int, int, float] | None:
  """(step, total steps, seconds left) from the last progress line in a unit's log after
  byte `start` (where this session's output begins), or None before its first one."""
  try:
    with open(log_path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(start, f.tell() - 16384))
      tail = f.read().decode(errors='replace')
  except OSError:
    return None
  for line in reversed(tail.splitlines()):
    m = _PROGRESS_RE.match(line.strip())
    if m:
      h, mi, sec = (int(v) for v in m.groups()[2:])
      return int(m[1]), int(m[2]), float(3600 * h + 60 * mi + sec)
  return None


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
    progress being `unit_progress`'s (step, total, seconds left) or None; None while
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


_VISIBLE = {'cuda': 'CUDA_VISIBLE_DEVICES', 'rocm': 'HIP_VISIBLE_DEVICES'}


def worker_envs(workdir: str, n_workers: int, devices: Devices, sizes=(1,),
                environ=None) -> list[dict]:
  """The environments of the sweep's worker processes. On GPUs each worker gets GPUs of
  its own while there are enough (as many as divide every batch size in `sizes`),
  else a share of one GPU's memory; a cell's run shards over the GPUs it sees."""
  env = dict(os.environ if environ is None else environ)
  # Cells of one architecture compile the same programs: JAX's persistent cache
  # compiles them once for the sweep.
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.abspath(workdir),
                                                           '.jax_cache'))
  envs = [dict(env) for _ in range(n_workers)]
  var = _VISIBLE.get(devices.platform)
  if var is None or n_workers <= 1:  # (None when every cell is done.)
    return envs
  # The ids the user made visible, if any, else all: what the cells' JAX counts from.
  ids = env[var].split(',')[:devices.count] if env.get(var) else [
      str(i) for i in range(devices.count)]
  if n_workers <= len(ids):
    k = max(d for d in range(1, len(ids) // n_workers + 1)
            if all(size % d == 0 for size in sizes))
    for i, e in enumerate(envs):
      e[var] = ','.join(ids[i * k:(i + 1) * k])
  else:  # Workers share GPUs: each JAX process would otherwise take 75% of one.
    sharing = -(-n_workers // len(ids))
    for i, e in enumerate(envs):
      e[var] = ids[i % len(ids)]
      e.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / sharing:.2f}')
  return envs


def run_sweep(ablation, workdir: str, cells, parallel: int, together: bool = False,
              devices: Devices = Devices('cpu', 1)):
  status = {c: cell_status(os.path.join(workdir, c.name)) for c in cells}
  todo = [c for c in cells if status[c] not in ('done', 'diverged')]
  print(f'{len(cells)} cells in this shard: {len(cells) - len(todo)} finished, '
        f'{len(todo)} to run.', flush=True)
  queue = units(todo, together)
  n_units = len(queue)
  n_workers = min(max(parallel, 1), n_units)
  sizes = {size for c in todo for config in [cell_config(ablation, c)]
           for size in (config.batch_size, config.eval_batch_size)}
  envs = worker_envs(workdir, n_workers, devices, sizes)
  var = _VISIBLE.get(devices.platform)
  if var and n_workers > 1:
    print(f'Workers\' {devices.platform.upper()} devices: '
          + '; '.join(f'{i}: {e[var]}' for i, e in enumerate(envs)), flush=True)
  workers = [Worker(workdir, i, env) for i, env in enumerate(envs)]
  clock, done = Clock(len(workers)), 0
  resumed = {unit_name(u) for u in queue if any(status[c] == 'partial' for c in u)}

  log_of = lambda unit: os.path.join(workdir, f'{unit_name(unit)}.log')
  shown = {'time': time.perf_counter(), 'steps': {}}
  log_starts = {}  # Where each unit's log stood when it started: older lines are stale.
  progress = lambda unit: unit_progress(log_of(unit), log_starts.get(unit_name(unit), 0))

  def give_next(worker):
    if queue:
      unit = queue.pop(0)
      name = unit_name(unit)
      log = log_of(unit)
      log_starts[name] = os.path.getsize(log) if os.path.exists(log) else 0
      worker.give(unit)
      print(f'[{n_units - len(queue)}/{n_units}] started {name} (log: {name}.log)',
            flush=True)
    else:
      worker.no_more()

  def show_progress():
    """Every --progress_every seconds, if a running unit has logged a step since: each
    running unit's step and the sweep's ETA (a long cell says nothing else for hours)."""
    now = time.perf_counter()
    if now - shown['time'] < _PROGRESS_EVERY.value:
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
    for worker in workers:
      give_next(worker)
    while any(w.unit for w in workers):
      show_progress()
      busy = {w.proc.stdout: w for w in workers if w.unit}
      ready, _, _ = select.select(list(busy), [], [],
                                  min(max(_PROGRESS_EVERY.value, 0.2), 5.0))
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
        statuses = [cell_status(os.path.join(workdir, c.name)) for c in unit]
        now = time.perf_counter()
        clock.finished(unit_cost(unit), now - worker.started, name in resumed)
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


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed.
  from experiments import report
  ablation, workdir = flags.FLAGS.config, _WORKDIR.value
  try:
    modes = [f'--{name}' for name in ('dry_run', 'estimate', 'report_only')
             if flags.FLAGS[name].value]
    if len(modes) > 1:
      raise config_lib.ConfigError(f'{" and ".join(modes)} each do something else: give '
                                   'one of them.')
    if _CELLS.value == []:  # `--cells=$CELLS` with CELLS unset: not the whole grid.
      raise config_lib.ConfigError('--cells names no cell: name the cells to run '
                                   '(--dry_run lists them), or leave the flag out to run '
                                   'the grid.')
    run_dir.check_local(workdir)
    run_dir.check_kind(workdir, sweep=True)
    cells = grid(ablation)
    chosen = None
    if _CELLS.value:
      by_name = {c.name: c for c in cells}
      unknown = [n for n in _CELLS.value if n not in by_name]
      if unknown:
        raise config_lib.ConfigError(f'No cell named {unknown[0]!r} in this grid: '
                                     '--dry_run lists them.')
      chosen = [by_name[n] for n in _CELLS.value]
      check_unit(chosen)
      if not (_DRY_RUN.value or _ESTIMATE.value):  # Those only list or time them.
        run_cells(ablation, chosen, workdir)
        return
    if _WORKER.value:
      serve(ablation, cells, workdir)
      return
    check_shard(_SHARD_INDEX.value, _NUM_SHARDS.value)
    report.paper_table_name(ablation.get('paper_table', ''))  # Refused now, not at the end.
    configs = [cell_config(ablation, cell) for cell in cells]
    for config in configs:  # Check every cell's config before anything runs.
      config_lib.validate(config)
    check_cell_configs(ablation, cells, workdir)
    # Which devices the cells will see, where it matters: vmapped seeds and workers.
    probe = not _REPORT_ONLY.value and (_VMAP_SEEDS.value == 'auto' or _PARALLEL.value > 1)
    devices = probe_devices() if probe else Devices('cpu', 1)
    data_name = configs[0].data.name  # One run config: every cell reads the same data.
    together = seeds_together(_VMAP_SEEDS.value, devices,
                              '' if datasets.get_spec(data_name).in_memory else data_name)
    mine = chosen or shard(cells, _SHARD_INDEX.value, _NUM_SHARDS.value, together)
    if _ESTIMATE.value:
      total, left = estimate(ablation, mine, together, workdir=workdir)
      print(f'{len(mine)} cell{"s" * (len(mine) != 1)}'
            f'{" in this shard" if _NUM_SHARDS.value > 1 else ""}: about '
            f'{format_duration(total)} of training steps here, one program at a '
            'time on all these devices (compiling, evaluation and input not counted; '
            '--parallel workers with devices of their own divide it).')
      status = collections.Counter(cell_status(os.path.join(workdir, c.name)) for c in mine)
      if status['new'] < len(mine):
        print(f'{len(mine) - status["new"] - status["partial"]} of them finished and '
              f'{status["partial"]} partly trained in {workdir}: about '
              f'{format_duration(left)} of training steps left.')
      return
    if _DRY_RUN.value:
      try:
        for unit in units(mine, together):
          status = '/'.join(cell_status(os.path.join(workdir, c.name)) for c in unit)
          print(f'{unit_name(unit):28s} {status:8s} {unit_command(unit)}')
        sys.stdout.flush()
      except BrokenPipeError:  # Piped into `head`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      return
    if not _REPORT_ONLY.value:
      check_parallel(_PARALLEL.value, devices)
    elif not os.path.isdir(workdir):  # A mistyped path: nothing to report, nothing made.
      raise config_lib.ConfigError(f'There is no sweep directory {workdir}: give '
                                   '--report_only the --workdir the sweep ran in.')
    run_dir.check_writable(workdir)
    # One driver per shard (shards may share the directory): a second is refused before
    # it writes anything. A report alone may be written while the sweep runs.
    held = [] if _REPORT_ONLY.value else [workdir]
    with run_dir.exclusive(held, f'.lock-shard{_SHARD_INDEX.value}of{_NUM_SHARDS.value}'):
      saved = saved_ablation(ablation, data_name)
      run_dir.write_text(os.path.join(workdir, 'ablation.json'),
                         saved.to_json_best_effort(indent=2))
      if not _REPORT_ONLY.value:
        # Workers checkpoint their cells and stop (SIGINT too: a shell's background job
        # inherits it ignored).
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        run_sweep(ablation, workdir, mine, _PARALLEL.value, together, devices)
    report.write_report(workdir, saved)
  except (config_lib.ConfigError, CellFailed, report.ReportError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit('Interrupted: finished cells are kept and the others resume from their last '
             'checkpoint when the same command runs again.')


def _stop(signum, frame):
  del frame
  raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
