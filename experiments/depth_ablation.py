"""Runs the depth ablation grid, resumably, then writes the report.

python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=runs/ablation
Every cell is an ordinary resnet_jax run in WORKDIR/CELL. Rerunning skips finished
cells and resumes unfinished ones; --shard_index/--num_shards run one slice of the
grid (spread it over machines); --dry_run lists the cells; --report_only rewrites
the report from whatever cells exist.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from resnet_jax import config_lib

config_flags.DEFINE_config_file('config', None, 'configs/ablation.py[:PRESET].',
                                lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the cells and their commands only.')
_SHARD_INDEX = flags.DEFINE_integer('shard_index', 0, 'Which slice of the grid to run.')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Into how many slices to cut the grid.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Cells run at once, each in its own process '
                                 '(2 is ~1.3x faster on a 2-core CPU).')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False, 'Only (re)write the report.')
_VMAP_SEEDS = flags.DEFINE_enum(
    'vmap_seeds', 'auto', ['auto', 'on', 'off'], 'Train the seeds of each (depth, net) in '
    'one program with jax.vmap: faster on GPUs and TPUs, slower on CPUs; auto = on where '
    'the default JAX backend is not the CPU.')
_CELLS = flags.DEFINE_list('cells', None, 'Run these cells (seeds of one depth and net) in '
                           'this process (internal).')
flags.mark_flags_as_required(['config', 'workdir'])

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs')


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


def grid(ablation) -> list[Cell]:
  """Every cell of the sweep, shallow first so that early results come early."""
  cells = [Cell(d, s, seed) for d in ablation.depths for seed in ablation.seeds
           for s in ablation.shortcuts if f'{s}-{d}' not in ablation.exclude]
  return cells


def shard(cells, index: int, count: int):
  if count < 1 or not 0 <= index < count:
    raise config_lib.ConfigError(f'--shard_index {index} must be in [0, --num_shards '
                                 f'{count}).')
  return cells[index::count]


def load_config_file(name: str):
  path = name if os.path.isabs(name) else os.path.join(CONFIG_DIR, name)
  spec = importlib.util.spec_from_file_location(f'resnet_jax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def merge(config, overrides):
  """Recursively sets `overrides` into `config`; unknown keys are an error."""
  for key, value in overrides.items():
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
  config = load_config_file(ablation.run_config).get_config(arg)
  merge(config, ablation.overrides)
  config.seed = cell.seed
  return config


def cell_status(workdir: str) -> str:
  """'done', 'diverged', 'partial' (has checkpoints) or 'new'."""
  if os.path.exists(os.path.join(workdir, 'diverged.json')):
    return 'diverged'
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if '"split": "run"' in line:
          return 'done'
  return 'partial' if os.path.isdir(os.path.join(workdir, 'checkpoints')) else 'new'


def run_cells(ablation, cells: list[Cell], workdir: str):
  """Trains cells that differ only in seed in this process, together (vmap) when several;
  records a diverged seed instead of raising."""
  from resnet_jax import train
  config = cell_config(ablation, cells[0])
  results = train.train_seeds(config, {c.seed: os.path.join(workdir, c.name) for c in cells})
  for cell in cells:
    result = results[cell.seed]
    if 'diverged_at' in result:
      with open(os.path.join(workdir, cell.name, 'diverged.json'), 'w') as f:
        json.dump({'step': result['diverged_at'], 'message': result['message']}, f)
      print(f'{cell.name} diverged at step {result["diverged_at"]}; the sweep goes on.',
            flush=True)
    elif 'stopped_at' not in result and cell.seed == min(ablation.seeds):
      # The report's layer analysis, here while the data are loaded, beside other cells.
      from experiments import analysis
      analysis.cell_analysis(os.path.join(workdir, cell.name),
                             ablation.get('analysis_examples', 256))


def seeds_together(choice: str) -> bool:
  """Resolves --vmap_seeds; 'auto' asks JAX for its backend in a short-lived process,
  so that this driver never holds the accelerator its cells need."""
  if choice != 'auto':
    return choice == 'on'
  out = subprocess.run([sys.executable, '-c', 'import jax; print(jax.default_backend())'],
                       capture_output=True, text=True, timeout=300)
  backend = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else 'cpu'
  return backend not in ('cpu', '')


def units(todo: list[Cell], together: bool) -> list[list[Cell]]:
  """The processes to run: one per cell, or one per (depth, net) with its seeds."""
  if not together:
    return [[c] for c in todo]
  groups = {}
  for cell in todo:
    groups.setdefault((cell.depth, cell.shortcut), []).append(cell)
  return list(groups.values())


def unit_name(unit: list[Cell]) -> str:
  if len(unit) == 1:
    return unit[0].name
  return unit[0].name.rsplit('-seed', 1)[0] + '-seeds' + '+'.join(str(c.seed) for c in unit)


def unit_command(unit: list[Cell]) -> list[str]:
  argv = [a for a in sys.argv[1:] if not a.startswith(('--parallel', '--dry_run',
                                                       '--shard_', '--num_shards',
                                                       '--vmap_seeds'))]
  return [sys.executable, '-m', 'experiments.depth_ablation', *argv,
          f'--cells={",".join(c.name for c in unit)}']


def run_sweep(ablation, workdir: str, cells, parallel: int, together: bool = False):
  todo = [c for c in cells if cell_status(os.path.join(workdir, c.name)) not in
          ('done', 'diverged')]
  print(f'{len(cells)} cells in this shard: {len(cells) - len(todo)} finished, '
        f'{len(todo)} to run.', flush=True)
  queue = units(todo, together)
  n_units = len(queue)
  # Cells of one architecture compile the same programs: JAX's persistent cache
  # compiles them once for the sweep.
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(os.path.abspath(workdir),
                                                           '.jax_cache'))
  running, started, finished_depth = {}, time.perf_counter(), 0
  cost = lambda unit: sum(c.depth for c in unit)  # Cost grows with depth.
  while queue or running:
    while queue and len(running) < parallel:
      unit = queue.pop(0)
      name = unit_name(unit)
      log = open(os.path.join(workdir, f'{name}.log'), 'a')
      running[name] = (unit, subprocess.Popen(unit_command(unit), stdout=log,
                                              stderr=subprocess.STDOUT, env=env),
                       log, time.perf_counter())
      print(f'[{n_units - len(queue)}/{n_units}] started {name} (log: {name}.log)',
            flush=True)
    time.sleep(1)
    for name, (unit, proc, log, t0) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[name]
      statuses = [cell_status(os.path.join(workdir, c.name)) for c in unit]
      if proc.returncode != 0 and 'diverged' not in statuses:
        raise CellFailed(f'{name} failed (exit {proc.returncode}): see '
                         f'{os.path.join(workdir, name + ".log")}.')
      finished_depth += cost(unit)
      left = sum(cost(u) for u in queue) + sum(cost(u) for u, *_ in running.values()) / 2
      eta = (time.perf_counter() - started) / finished_depth * left
      print(f'{name}: {"/".join(sorted(set(statuses)))} in {time.perf_counter() - t0:.0f} s; '
            f'{n_units - len(queue) - len(running)}/{n_units} done, ETA {eta / 60:.1f} min',
            flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from experiments import report
  ablation, workdir = flags.FLAGS.config, _WORKDIR.value
  cells = grid(ablation)
  try:
    if _CELLS.value:
      by_name = {c.name: c for c in cells}
      unknown = [n for n in _CELLS.value if n not in by_name]
      if unknown:
        raise config_lib.ConfigError(f'No cell named {unknown[0]!r} in this grid.')
      run_cells(ablation, [by_name[n] for n in _CELLS.value], workdir)
      return
    mine = shard(cells, _SHARD_INDEX.value, _NUM_SHARDS.value)
    for cell in cells:  # Check every cell's config before anything runs.
      config_lib.validate(cell_config(ablation, cell))
    if _DRY_RUN.value:
      for unit in units(mine, seeds_together(_VMAP_SEEDS.value)):
        status = '/'.join(cell_status(os.path.join(workdir, c.name)) for c in unit)
        print(f'{unit_name(unit):28s} {status:8s} {" ".join(unit_command(unit)[1:])}')
      return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'ablation.json'), 'w') as f:
      f.write(ablation.to_json_best_effort(indent=2))
    if not _REPORT_ONLY.value:
      run_sweep(ablation, workdir, mine, _PARALLEL.value, seeds_together(_VMAP_SEEDS.value))
    report.write_report(workdir, ablation)
  except (config_lib.ConfigError, CellFailed) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
