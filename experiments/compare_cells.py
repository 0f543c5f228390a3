"""Where two cells' trained nets disagree on a held-out split (resnet_jax.analysis.compare).

  python -m experiments.compare_cells \
      --cells=runs/ablation/resnetA-20-seed0,runs/ablation/resnetA-56-seed0
"""

import sys

from absl import app
from absl import flags
from absl import logging

from resnet_jax import cli

_CELLS = flags.DEFINE_list('cells', None, 'The two cell directories to compare.',
                           required=True)
_SPLIT = flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'The held-out split.')
_TOP_PAIRS = flags.DEFINE_integer('top_pairs', 8, 'How many of the most confused class '
                                  'pairs to list.', lower_bound=0)


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Its tables are printed.
  from resnet_jax import train
  from resnet_jax.analysis import compare
  try:
    print(compare.compare_cells(_CELLS.value or [], _SPLIT.value, _TOP_PAIRS.value), end='')
  except (compare.CompareError, FileNotFoundError) + train.USER_ERRORS as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
