"""Runs the depth ablation grid, resumably, then writes the report.

python -m experiments.depth_ablation --config=configs/ablation.py:quick --workdir=runs/ablation
Every cell is an ordinary resnet_jax run in WORKDIR/CELL, trained by one of
--parallel worker processes (each runs cell after cell). Rerunning skips finished
cells and resumes unfinished ones; --shard_index/--num_shards run one slice of the
grid (spread it over machines; --shard_index=auto takes this host's slice where the same
command runs on every host: SLURM tasks, a TPU slice's workers); --dry_run lists the cells; --estimate times their
steps on this machine; --report_only rewrites the report from whatever cells exist.
--launcher=slurm submits the cells as a SLURM job array instead (resources from the
config's `slurm` section, --slurm.KEY=VALUE), follows it, and re-attaches when run
again; --status only reports (docs/cluster.md).
The sweep itself lives in resnet_jax.sweep, its report in resnet_jax.analysis.
"""

import functools

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resnet_jax import cli
from resnet_jax import config_lib
from resnet_jax import run_dir
from resnet_jax.analysis import results
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import cells as cells_lib
from resnet_jax.sweep import driver
from resnet_jax.sweep import hosts
from resnet_jax.sweep import runner

config_flags.DEFINE_config_file('config', None, 'configs/ablation.py[:PRESET].',
                                lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the cells and their commands only.')
_SHARD_INDEX = flags.DEFINE_string(
    'shard_index', '0', 'Which slice of the grid to run (0 to --num_shards - 1), or auto: '
    'this host\'s index among those running the same command (SLURM tasks, TPU VM '
    'workers).')
_NUM_SHARDS = flags.DEFINE_string(
    'num_shards', None, 'Into how many slices to cut the grid (default 1, or with '
    '--shard_index=auto the hosts running the command).')
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
_LAUNCHER = flags.DEFINE_enum(
    'launcher', 'local', ['local', 'slurm'], 'Who runs the cells: local = --parallel '
    'worker processes here; slurm = one task of a SLURM job array each (submitit).')
_STATUS = flags.DEFINE_bool('status', False, 'Only report where each cell stands (and, '
                            'with --launcher=slurm, its task), then exit.')
_WORKER = flags.DEFINE_bool('worker', False, 'Run the units named on stdin (internal: '
                            'the sweep\'s worker processes).')
flags.mark_flags_as_required(['config', 'workdir'])
# The driver's own flags, which its workers and the dry run's commands do not take.
_OWN = ('parallel', 'dry_run', 'shard_index', 'num_shards', 'vmap_seeds', 'cells', 'worker',
        'progress_every', 'estimate', 'launcher', 'status')


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed.
  ablation, workdir = flags.FLAGS.config, _WORKDIR.value
  try:
    modes = [f'--{name}' for name in ('dry_run', 'estimate', 'report_only', 'status')
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
      own = {name: not flags.FLAGS[name].boolean for name in _OWN}  # Takes a value?
      index, count = hosts.resolve(_SHARD_INDEX.value, _NUM_SHARDS.value or (
          'auto' if _SHARD_INDEX.value == 'auto' else '1'))
      driver.drive(ablation, workdir, cells, chosen, driver.Options(
          shard_index=index, num_shards=count,
          parallel=_PARALLEL.value, vmap_seeds=_VMAP_SEEDS.value, launcher=_LAUNCHER.value,
          dry_run=_DRY_RUN.value, estimate=_ESTIMATE.value, report_only=_REPORT_ONLY.value,
          status=_STATUS.value, progress_every=_PROGRESS_EVERY.value, own=own))
  except (config_lib.ConfigError, runner.CellFailed, results.ReportError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit('Interrupted: finished cells are kept and the others resume from their last '
             'checkpoint when the same command runs again.')


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               aliases={'--slurm.': '--config.slurm.'}))
