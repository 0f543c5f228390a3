"""Runs the depth ablation grid, resumably, then writes the report.

python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=runs/ablation
Every cell is an ordinary resnet_jax run in WORKDIR/CELL, trained by one of
--parallel worker processes (each runs cell after cell). Rerunning skips finished
cells and resumes unfinished ones; --shard_index/--num_shards run one slice of the
grid (spread it over machines); --dry_run lists the cells; --estimate times their
steps on this machine; --report_only rewrites the report from whatever cells exist.
The sweep itself lives in resnet_jax.sweep, its report in resnet_jax.analysis.
"""

import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resnet_jax import cli
from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import run_dir
from resnet_jax.analysis import paper
from resnet_jax.analysis import report
from resnet_jax.analysis import results
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import cells as cells_lib
from resnet_jax.sweep import commands
from resnet_jax.sweep import devices as devices_lib
from resnet_jax.sweep import runner

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
# The driver's own flags, which its workers and the dry run's commands do not take.
_OWN = ('parallel', 'dry_run', 'shard_index', 'num_shards', 'vmap_seeds', 'cells', 'worker',
        'progress_every', 'estimate')


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed.
  ablation, workdir = flags.FLAGS.config, _WORKDIR.value
  try:
    modes = [f'--{name}' for name in ('dry_run', 'estimate', 'report_only')
             if flags.FLAGS[name].value]
    if len(modes) > 1:
      raise config_lib.ConfigError(f'{" and ".join(modes)} each do something else: give '
                                   'one of them.')
    run_dir.check_local(workdir)
    ablation_lib.refuse_run_dir(workdir)
    cells = cells_lib.grid(ablation)
    chosen = None if _CELLS.value is None else cells_lib.select(cells, _CELLS.value)
    if chosen and not (_DRY_RUN.value or _ESTIMATE.value):  # Those only list or time them.
      from resnet_jax.sweep import worker
      worker.run_cells(ablation, chosen, workdir)
    elif _WORKER.value:
      from resnet_jax.sweep import worker
      worker.serve(ablation, cells, workdir)
    else:
      drive(ablation, workdir, cells, chosen)
  except (config_lib.ConfigError, runner.CellFailed, results.ReportError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit('Interrupted: finished cells are kept and the others resume from their last '
             'checkpoint when the same command runs again.')


def drive(ablation, workdir: str, cells, chosen):
  """The driver: every cell checked, then its shard listed (--dry_run), timed
  (--estimate), or run by its workers, and the report written (--report_only: the
  report alone)."""
  cells_lib.check_shard(_SHARD_INDEX.value, _NUM_SHARDS.value)
  paper.table_name(ablation.get('paper_table', ''))  # Refused now, not at the end.
  configs = [ablation_lib.cell_config(ablation, cell) for cell in cells]
  # Every cell's config is checked before anything runs; the models' own rules (which
  # need JAX) by this process only where it lists or times the cells: a sweep's workers
  # check them before they train, so that this driver imports no JAX.
  for config in configs:
    config_lib.validate(config, model=_DRY_RUN.value or _ESTIMATE.value)
  ablation_lib.check_cell_configs(ablation, cells, workdir)
  # Which devices the cells will see, where it matters: vmapped seeds and workers.
  probe = not _REPORT_ONLY.value and (_VMAP_SEEDS.value == 'auto' or _PARALLEL.value > 1)
  devices = devices_lib.probe_devices() if probe else devices_lib.Devices('cpu', 1)
  data_name = configs[0].data.name  # One run config: every cell reads the same data.
  together = devices_lib.seeds_together(
      _VMAP_SEEDS.value, devices,
      '' if datasets.get_spec(data_name).in_memory else data_name)
  mine = chosen or cells_lib.shard(cells, _SHARD_INDEX.value, _NUM_SHARDS.value, together)
  own = {name: not flags.FLAGS[name].boolean for name in _OWN}  # Takes a value?
  if _ESTIMATE.value:
    from resnet_jax.sweep import estimate
    estimate.print_estimate(ablation, mine, together, workdir, _NUM_SHARDS.value > 1)
    return
  if _DRY_RUN.value:
    commands.print_dry_run(cells_lib.units(mine, together), workdir, own)
    return
  if not _REPORT_ONLY.value:
    devices_lib.check_parallel(_PARALLEL.value, devices)
  elif not os.path.isdir(workdir):  # A mistyped path: nothing to report, nothing made.
    raise config_lib.ConfigError(f'There is no sweep directory {workdir}: give '
                                 '--report_only the --workdir the sweep ran in.')
  run_dir.check_writable(workdir)
  # One driver per shard (shards may share the directory): a second is refused before
  # it writes anything. A report alone may be written while the sweep runs.
  held = [] if _REPORT_ONLY.value else [workdir]
  with run_dir.exclusive(held, f'.lock-shard{_SHARD_INDEX.value}of{_NUM_SHARDS.value}'):
    saved = ablation_lib.saved_ablation(ablation, data_name)
    run_dir.write_text(os.path.join(workdir, run_dir.SWEEP_RECORD),
                       saved.to_json_best_effort(indent=2))
    if not _REPORT_ONLY.value:
      # Workers checkpoint their cells and stop (SIGINT too: a shell's background job
      # inherits it ignored).
      signal.signal(signal.SIGTERM, _stop)
      signal.signal(signal.SIGINT, _stop)
      runner.run_sweep(ablation, workdir, mine, _PARALLEL.value,
                       commands.driver_command(sys.executable, own) + ['--worker'],
                       together, devices, _PROGRESS_EVERY.value)
  report.write_report(workdir, saved)


def _stop(signum, frame):
  del frame
  raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
