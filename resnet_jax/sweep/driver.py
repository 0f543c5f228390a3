"""The depth ablation's driver (experiments/depth_ablation.py): every cell checked, then
its shard listed, timed, reported on, or run by local workers or SLURM tasks, and the
report written."""

import dataclasses
import os
import signal
import sys

from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import run_dir
from resnet_jax.analysis import paper
from resnet_jax.analysis import report
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import cells as cells_lib
from resnet_jax.sweep import commands
from resnet_jax.sweep import devices as devices_lib
from resnet_jax.sweep import runner
from resnet_jax.sweep import slurm as slurm_lib


@dataclasses.dataclass(frozen=True)
class Options:
  """The driver's flags (experiments/depth_ablation.py says what each does); `own`:
  those its workers do not take ({name: whether it takes a value})."""
  shard_index: int = 0
  num_shards: int = 1
  parallel: int = 1
  vmap_seeds: str = 'auto'
  launcher: str = 'local'
  dry_run: bool = False
  estimate: bool = False
  report_only: bool = False
  status: bool = False
  progress_every: float = 60.0
  own: dict = dataclasses.field(default_factory=dict)


def drive(ablation, workdir: str, cells, chosen, opts: Options):
  """The driver: every cell checked, then its shard listed (--dry_run), timed
  (--estimate), reported on (--status), or run by its workers or SLURM tasks, and the
  report written (--report_only: the report alone)."""
  cells_lib.check_shard(opts.shard_index, opts.num_shards)
  paper.table_name(ablation.get('paper_table', ''))  # Refused now, not at the end.
  configs = [ablation_lib.cell_config(ablation, cell) for cell in cells]
  slurm = opts.launcher == 'slurm'
  if slurm:
    slurm_lib.check_resources(ablation)
  # Every cell's config is checked before anything runs; the models' own rules (which
  # need JAX) by this process only where it lists or times the cells, or submits them to
  # SLURM (a queue can hold them for hours): local workers check them before they train,
  # so that this driver imports no JAX.
  for config in configs:
    config_lib.validate(config, model=opts.dry_run or opts.estimate or slurm)
  ablation_lib.check_cell_configs(ablation, cells, workdir)
  devices = _devices(ablation, opts)
  data_name = configs[0].data.name  # One run config: every cell reads the same data.
  together = devices_lib.seeds_together(
      opts.vmap_seeds, devices,
      '' if datasets.get_spec(data_name).in_memory else data_name)
  mine = chosen or cells_lib.shard(cells, opts.shard_index, opts.num_shards, together)
  if opts.estimate:
    from resnet_jax.sweep import estimate
    estimate.print_estimate(ablation, mine, together, workdir, opts.num_shards > 1)
  elif opts.dry_run and slurm:
    slurm_lib.print_dry_run(ablation.slurm, workdir, cells_lib.units(mine, together))
  elif opts.dry_run or (opts.status and not slurm):
    commands.print_dry_run(cells_lib.units(mine, together), workdir, opts.own)
  else:
    _run(ablation, workdir, mine, together, devices, data_name, opts)


def _devices(ablation, opts: Options) -> devices_lib.Devices:
  """Which devices the cells will see, where it matters (vmapped seeds, workers): a SLURM
  task's are its GPUs, not this login node's."""
  if opts.launcher == 'slurm':
    gpus = ablation.slurm.gpus_per_task
    return devices_lib.Devices('cuda' if gpus else 'cpu', max(gpus, 1))
  if not opts.report_only and (opts.vmap_seeds == 'auto' or opts.parallel > 1):
    return devices_lib.probe_devices()
  return devices_lib.Devices('cpu', 1)


def _run(ablation, workdir: str, mine, together: bool, devices, data_name: str,
         opts: Options):
  """Runs the shard's cells (by local workers or SLURM tasks), then writes the report."""
  slurm = opts.launcher == 'slurm'
  if opts.report_only:
    if not os.path.isdir(workdir):  # A mistyped path: nothing to report, nothing made.
      raise config_lib.ConfigError(f'There is no sweep directory {workdir}: give '
                                   '--report_only the --workdir the sweep ran in.')
  elif not slurm:
    devices_lib.check_parallel(opts.parallel, devices)
  run_dir.check_writable(workdir)
  # One driver per shard (shards may share the directory): a second is refused before
  # it writes anything. A report alone, or a status, may be asked while the sweep runs.
  held = [] if opts.report_only or opts.status else [workdir]
  with run_dir.exclusive(held, f'.lock-shard{opts.shard_index}of{opts.num_shards}'):
    saved = ablation_lib.saved_ablation(ablation, data_name)
    if not opts.status:
      run_dir.write_text(os.path.join(workdir, run_dir.SWEEP_RECORD),
                         saved.to_json_best_effort(indent=2))
    if not (opts.report_only or opts.status):
      # Workers checkpoint their cells and stop (SIGINT too: a shell's background job
      # inherits it ignored); SLURM's tasks go on.
      signal.signal(signal.SIGTERM, _stop)
      signal.signal(signal.SIGINT, _stop)
    if slurm and not opts.report_only:
      units = cells_lib.units(mine, together)
      steps = {c: ablation_lib.cell_steps(ablation_lib.cell_config(ablation, c)) for c in mine}
      slurm_lib.run(ablation, workdir, units, steps, opts.progress_every, opts.status)
      if opts.status:
        return
    elif not opts.report_only:
      runner.run_sweep(ablation, workdir, mine, opts.parallel,
                       commands.driver_command(sys.executable, opts.own) + ['--worker'],
                       together, devices, opts.progress_every)
  report.write_report(workdir, saved)


def _stop(signum, frame):
  del frame
  raise KeyboardInterrupt(signal.Signals(signum).name)
