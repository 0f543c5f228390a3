"""Rewrites a sweep's report from its cells: results.csv/.md, the figures and report.md.

python -m experiments.report --workdir=runs/ablation
"""

import sys

from absl import app
from absl import flags
from absl import logging

from resnet_jax import cli
from resnet_jax import config_lib
from resnet_jax.analysis import report
from resnet_jax.analysis import results

_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory.', required=True)
_NO_ANALYSIS = flags.DEFINE_bool('no_analysis', False, 'Skip the layer and gradient analysis.')


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Its table and the figures' names are printed.
  try:
    report.write_report(_WORKDIR.value, results.read_ablation(_WORKDIR.value),
                        analyse=not _NO_ANALYSIS.value)
  except (results.ReportError, config_lib.ConfigError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
