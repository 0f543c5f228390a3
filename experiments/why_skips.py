"""Why skips work: loss landscapes, the lesion study and sharpness of trained cells, then
the sweep's report with their figures and table (resnet_jax.analysis.why_skips).

  python -m experiments.why_skips --workdir=runs/ablation
  python -m experiments.why_skips --workdir=runs/ablation --cells='*-56-*' --paper
  python -m experiments.why_skips --runs=runs/cifar10_resnet20,runs/cifar10_plain20
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from resnet_jax import cli
from resnet_jax.analysis import why_skips

_D = why_skips.Options()
_WORKDIR = flags.DEFINE_string('workdir', None, 'A sweep directory: analyses its finished '
                               'cells, then rewrites its report.')
_RUNS = flags.DEFINE_list('runs', [], 'Single runs\' directories to analyse instead.')
_CELLS = flags.DEFINE_list('cells', [], 'Which of the sweep\'s cells, as shell patterns of '
                           'their names (plain-56-seed0, \'*-56-*\'); default all.')
_ANALYSES = flags.DEFINE_list('analyses', list(_D.analyses), 'Some of '
                              f'{", ".join(why_skips.ANALYSES)}.')
_PAPER = flags.DEFINE_bool('paper', False, 'Li et al.\'s resolution: 51x51 landscapes on '
                           'the whole training set (for an accelerator).')
_INTS = {name: flags.DEFINE_integer(name, getattr(_D, name), help_)
         for name, help_ in (
             ('landscape_resolution', 'Points a side of the 2-D landscape over [-1, 1]^2.'),
             ('landscape_line_points', 'Points of the 1-D slice and the init->trained line.'),
             ('landscape_examples', 'Training images of the landscapes (0: all).'),
             ('landscape_directions', 'Random directions of the profiles (every seed).'),
             ('points_per_call', 'Landscape points vmapped a call (0: 1 on CPU, 8 else).'),
             ('lesion_examples', 'Test images of the lesion study (0: all).'),
             ('lesion_draws', 'Random draws of each number of deleted blocks.'),
             ('lesion_max_deleted', 'The most blocks deleted at once.'),
             ('sharpness_examples', 'Training images of the Hessian (0: all).'),
             ('sharpness_iterations', 'Power iterations at most.'),
             ('seed', 'Of the directions, the deletions and the power iteration.'))}
_LANDSCAPE_SEEDS = flags.DEFINE_enum('landscape_seeds', _D.landscape_seeds, ['first', 'all'],
                                     'Landscapes of each depth and net\'s first seed, or all.')


_STALLED = flags.DEFINE_bool('stalled', _D.stalled, 'Also analyse the cells that stalled '
                             'near chance (by default listed, not analysed).')


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed.
  if bool(_WORKDIR.value) == bool(_RUNS.value):
    sys.exit('error: pass either --workdir (a sweep) or --runs (single runs\' directories).')
  options = why_skips.Options(analyses=tuple(_ANALYSES.value),
                              landscape_seeds=_LANDSCAPE_SEEDS.value, stalled=_STALLED.value,
                              **{k: f.value for k, f in _INTS.items()})
  if _PAPER.value:
    options = options.paper()
  if _WORKDIR.value and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    import jax
    from resnet_jax.sweep import devices
    jax.config.update('jax_compilation_cache_dir', devices.compilation_cache(_WORKDIR.value))
  from resnet_jax import config_lib
  from resnet_jax import train
  from resnet_jax.analysis import report
  from resnet_jax.analysis import results
  try:
    if _RUNS.value:
      why_skips.run_dirs(_RUNS.value, options)
      return
    why_skips.run_sweep(_WORKDIR.value, options, _CELLS.value)
    report.write_report(_WORKDIR.value, results.read_ablation(_WORKDIR.value))
  except (ValueError, FileNotFoundError, config_lib.ConfigError) + train.USER_ERRORS as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
