"""The driver's command line as its workers and a dry run's lines repeat it: every
argument but the driver's own flags."""

import contextlib
import os
import shlex
import sys

from resnet_jax.sweep import status
from resnet_jax.sweep.cells import Cell, unit_name

MODULE = 'experiments.depth_ablation'  # The driver: `python -m MODULE`.


def passed_flags(argv: list[str], own: dict[str, bool]) -> list[str]:
  """The arguments of `argv` that a cell's or a worker's process shares: all but the
  driver's `own` flags ({name: whether it takes a value}), given as `--flag=value`,
  `--flag value` or `--noflag`."""
  out, skip_value = [], False
  for arg in argv:
    if skip_value:
      skip_value = False
      continue
    name = arg.lstrip('-').split('=', 1)[0] if arg.startswith('-') else ''
    if name.startswith('no') and name[2:] in own:
      name = name[2:]
    if name in own:
      skip_value = '=' not in arg and own[name]
      continue
    out.append(arg)
  return out


def driver_command(python: str, own: dict[str, bool]) -> list[str]:
  """This process's command as its workers and the dry run's lines run it: without the
  driver's `own` flags."""
  return [python, '-m', MODULE, *passed_flags(sys.argv[1:], own)]


def unit_command(unit: list[Cell], own: dict[str, bool]) -> str:
  """The shell line that runs `unit` alone (what --dry_run prints, for a job array)."""
  return shlex.join(driver_command('python', own)
                    + [f'--cells={",".join(c.name for c in unit)}'])


@contextlib.contextmanager
def piped():
  """Printing a listing that may be piped into `head`: once the reader has what it
  wanted (a broken pipe), the rest goes nowhere, without a traceback."""
  try:
    yield
    sys.stdout.flush()
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_dry_run(units: list[list[Cell]], workdir: str, own: dict[str, bool]) -> None:
  """A line for each unit: its name, its cells' status and the command that runs it."""
  with piped():
    for unit in units:
      cells = '/'.join(status.cell_status(os.path.join(workdir, c.name)) for c in unit)
      print(f'{unit_name(unit):28s} {cells:8s} {unit_command(unit, own)}')
