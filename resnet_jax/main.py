"""Command line: python -m resnet_jax.main --config=configs/FILE.py[:ARGS] --workdir=DIR."""

import contextlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from resnet_jax import cli
from resnet_jax import config_lib
from resnet_jax import huge_pages
from resnet_jax import processes
from resnet_jax import run_dir
from resnet_jax.sweep import ablation as sweep_ablation

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
config_flags.DEFINE_config_file('config', None, 'A config file under configs/.',
                                lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a multi-process run '
    '(with --num_processes and --process_id); on TPU VMs and SLURM use --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (0 writes logs).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() '
                                 'and let it find the cluster (TPU pod slices, SLURM).')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue the run in --workdir although its config.json '
    'differs from --config (the old one is kept as config.<time>.json).')
flags.mark_flags_as_required(['config', 'workdir'])


def distributed_flags_error() -> str | None:
  """What is wrong with the multi-process flags, in one sentence, or None."""
  coordinator, count, index = _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  if coordinator is None:
    if (count is not None or index is not None) and not _DISTRIBUTED.value:
      return ('--num_processes and --process_id join a multi-process run only with '
              '--coordinator_address=HOST:PORT (process 0\'s); on TPU VMs and SLURM pass '
              '--distributed instead.')
    return None
  host, colon, port = coordinator.rpartition(':')
  if not (colon and host and port.isdigit()):
    return (f'--coordinator_address {coordinator!r} is not HOST:PORT: give process 0\'s '
            f'address and a free port, as in 10.0.0.1:1234.')
  if count is None or index is None:
    return ('--coordinator_address needs --num_processes (how many) and --process_id '
            '(this one, 0 to num_processes - 1).')
  if not 0 <= index < count:
    return f'--process_id {index} must be in [0, --num_processes {count}).'
  return None


def init_distributed():
  """Joins a multi-process run when asked to; a single process needs nothing."""
  if _COORDINATOR.value or _DISTRIBUTED.value:
    processes.join(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def main(argv):
  cli.refuse_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Progress lines are printed; --verbosity=0 for INFO.
  # Bad values fail at once, not after the training code's imports (seconds). validate builds
  # the model abstractly: no JAX backend starts, so jax.distributed can still join.
  problem = distributed_flags_error()
  if problem:
    sys.exit(f'error: {problem}')
  try:
    sweep_ablation.refuse_as_run(flags.FLAGS.config, _WORKDIR.value)
    config_lib.validate(flags.FLAGS.config)
    run_dir.check_local(_WORKDIR.value)
  except config_lib.ConfigError as e:
    sys.exit(f'error: {e}')
  init_distributed()
  import jax
  from resnet_jax import signals
  from resnet_jax import train
  # With several processes a Ctrl-C must stop them all at one step from now on, while the
  # data load and the steps compile too: one stopping alone would strand the others.
  early = signals.StopSignal() if jax.process_count() > 1 else contextlib.nullcontext()
  try:
    with early as stop:
      train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value,
                               allow_config_change=_ALLOW_CONFIG_CHANGE.value, stop=stop)
  except train.USER_ERRORS + (FloatingPointError,) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:  # Before the training loop, or a second Ctrl-C in it.
    sys.exit('Interrupted: the same command continues from the newest checkpoint, if any.')


if __name__ == '__main__':
  huge_pages.restart_with_huge_pages()  # XLA:CPU's buffers in huge pages (1.2-1.4x steps).
  app.run(main, flags_parser=cli.parse_flags)
