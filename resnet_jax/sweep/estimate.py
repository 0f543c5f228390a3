"""How long a sweep's cells train on this machine, timed rather than guessed: each depth
and net's train step compiled as the sweep compiles it, on random batches."""

import collections
import os

from resnet_jax import datasets
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import status as status_lib
from resnet_jax.sweep.cells import Cell, unit_name, units
from resnet_jax.durations import format_duration, format_minutes


def estimate(ablation, cells: list[Cell], together: bool, steps: int = 5,
             workdir: str | None = None) -> tuple[float, float]:
  """Times `steps` train steps of each depth and net's program here, as the sweep would
  compile it (its seeds vmapped with `together`), on random batches of its cells'
  shapes; prints each and returns the seconds the cells' steps would take here, one
  program after another, and those left after what the cells in `workdir` have run."""
  import jax
  from resnet_jax import timing
  groups = units(cells, together=True)  # Seeds differ in nothing a step's time sees.
  print(f'Timing the train step of each depth and net ({len(groups)}) on '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s): {steps} '
        f'step{"s" * (steps != 1)} after compiling, on random batches (no data read).',
        flush=True)
  status = {c: status_lib.cell_status(os.path.join(workdir, c.name)) if workdir else 'new'
            for c in cells}
  under_way = any(s != 'new' for s in status.values())
  total = left = 0.0
  for i, group in enumerate(groups, 1):
    config = ablation_lib.cell_config(ablation, group[0])
    spec = datasets.get_spec(config.data.name)
    shape = spec.image_shape if spec.in_memory else (
        (config.data.image_size,) * 2 + spec.image_shape[-1:])
    per_program = len(group) if together else 1
    timed = timing.time_train_step(config, shape, spec.num_classes, per_program, steps,
                                      warmup=1)
    n = ablation_lib.cell_steps(config)
    seconds = timed['step_s'] * n * (len(group) // per_program)
    behind = [status_lib.steps_behind(os.path.join(workdir, c.name), status[c], n) if under_way else 0
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


def print_estimate(ablation, cells: list[Cell], together: bool, workdir: str,
                   sharded: bool) -> None:
  """`estimate`, then the grid's (or this shard's, `sharded`) total and what the cells in
  `workdir` have left."""
  total, left = estimate(ablation, cells, together, workdir=workdir)
  print(f'{len(cells)} cell{"s" * (len(cells) != 1)}{" in this shard" if sharded else ""}: '
        f'about {format_duration(total)} of training steps here, one program at a time on '
        'all these devices (compiling, evaluation and input not counted; --parallel '
        'workers with devices of their own divide it).')
  status = collections.Counter(status_lib.cell_status(os.path.join(workdir, c.name))
                               for c in cells)
  if status['new'] < len(cells):
    print(f'{len(cells) - status["new"] - status["partial"]} of them finished and '
          f'{status["partial"]} partly trained in {workdir}: about '
          f'{format_duration(left)} of training steps left.')
