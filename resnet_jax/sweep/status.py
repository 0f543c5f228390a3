"""Where a sweep's cells stand, read from their run records (metrics.jsonl, checkpoints,
diverged.json): finished or not, and how far each has trained."""

import os

from resnet_jax import metrics_io
from resnet_jax import run_dir


def cell_status(workdir: str) -> str:
  """'done' (its run's last record is whole), 'diverged', 'partial' (has checkpoints: its
  run resumes, and redoes a last record a kill cut short) or 'new'."""
  if os.path.exists(os.path.join(workdir, run_dir.DIVERGED_FILE)):
    return 'diverged'
  if any(r.get('split') == 'run' for r in metrics_io.read_records(workdir)):
    return 'done'
  return 'partial' if os.path.isdir(os.path.join(workdir, 'checkpoints')) else 'new'


def steps_behind(cell_dir: str, status: str, steps: int) -> int:
  """The steps of its `steps` a cell of `status` has behind it: all when finished (or
  diverged: the sweep does not run it again), its newest checkpoint's when partly
  trained, else 0."""
  if status == 'partial':
    return min(max(run_dir.saved_steps(cell_dir), default=0), steps)
  return steps if status in ('done', 'diverged') else 0


def progress(cell_dir: str, total: int) -> tuple[int, int, float] | None:
  """(step, `total` steps, seconds left) of a cell from its last training record, at the
  speed it logged there, or None before its first one."""
  train = [r for r in metrics_io.read_records(cell_dir) if r.get('split') == 'train']
  if not train:
    return None
  step, rate = int(train[-1]['step']), train[-1].get('steps_per_second') or 0
  return step, total, (total - step) / rate if rate > 0 else 0.0
