"""Orbax checkpoints of a run: save, check-then-restore, and warm starts from another run.

A checkpoint holds the train state and the per-step metrics not yet averaged into a
log line, so a resumed run writes exactly the `metrics.jsonl` an uninterrupted one
would. Orbax writes each step into a temporary directory and renames it when
complete, so a checkpoint cut short by a kill is never taken for a finished one.
"""

import functools
import inspect
import logging
import os
import sys
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or that does not fit the run's model."""


def manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'pending': ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state, pending=(), force=False):
  """Saves `state` and the un-logged metrics `pending` (a list of {name: float32})."""
  pending = [{k: float(v) for k, v in m.items()} for m in pending]
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          pending=ocp.args.JsonSave(pending)),
            force=force)


def _describe(path) -> str:
  return '.'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def mismatch(stored: Any, target: Any) -> str | None:
  """The first difference of structure or shape between a stored tree and `target`."""
  stored_leaves = {_describe(p): v for p, v in jax.tree_util.tree_leaves_with_path(stored)}
  target_leaves = {_describe(p): v for p, v in jax.tree_util.tree_leaves_with_path(target)}
  missing = sorted(set(target_leaves) - set(stored_leaves))
  if missing:
    return f'it has no {missing[0]} (the model needs {len(missing)} arrays it lacks)'
  extra = sorted(set(stored_leaves) - set(target_leaves))
  if extra:
    return f'it holds {extra[0]}, which the model does not have'
  for name, value in target_leaves.items():
    have, want = tuple(stored_leaves[name].shape), tuple(np.shape(value))
    if have != want:
      return f'{name} has shape {have} there but {want} in this model'
  return None


RESUME_FIX = ('move that step directory away to resume from an earlier one, or use a new '
              '--workdir')


def _read(read, where: str, fix: str = RESUME_FIX, find_unreadable=None):
  """`read()`, with any failure turned into one sentence naming the checkpoint (and the
  first array that cannot be read, from `find_unreadable()` where given)."""
  previous = sys.unraisablehook
  sys.unraisablehook = functools.partial(_drop_failed_read_reports, previous)
  asyncio_log = logging.getLogger('asyncio')
  asyncio_log.addFilter(_keep_log_record)
  try:
    result = read()
  except Exception as e:  # pylint: disable=broad-except
    # The filters stay: the failed read's other reads still report after this error.
    array = find_unreadable() if find_unreadable else None
    cause = f'reading array {array} fails' if array else f'{type(e).__name__} in Orbax'
    raise CheckpointError(f'The checkpoint {where} cannot be read ({cause}): {fix}.') from e
  sys.unraisablehook = previous
  asyncio_log.removeFilter(_keep_log_record)
  return result


_READERS = ('orbax.', 'tensorstore', 'asyncio.')


def _is_failed_read_report(error, source=None) -> bool:
  """Whether `error` is what a failed read's other array reads, left in flight when Orbax
  gave up, report (each a traceback beside the one-line error): an error raised in
  Orbax's, TensorStore's or asyncio's code, or by one of Orbax's coroutines (`source`)."""
  modules = [frame.f_globals.get('__name__', '') for frame, _ in
             traceback.walk_tb(getattr(error, '__traceback__', None))]
  code = getattr(source, 'cr_code', None)
  if code is not None:
    modules.append(getattr(inspect.getmodule(code), '__name__', ''))
  return bool(modules) and all(m.startswith(_READERS) for m in modules)


def _drop_failed_read_reports(previous, report):
  """Passes every unraisable report on to `previous` but a failed read's."""
  if not _is_failed_read_report(report.exc_value, report.object):
    previous(report)


def _keep_log_record(record: logging.LogRecord) -> bool:
  """False for asyncio's 'Task exception was never retrieved' of a failed read's task,
  logged when the task is collected, possibly after the one-line error."""
  error = record.exc_info[1] if record.exc_info else None
  return error is None or not _is_failed_read_report(error)


def _first_unreadable(step_dir: str, stored) -> str | None:
  """The first array of `stored` (a checkpoint's metadata tree) that cannot be read on its
  own, every other array skipped (Orbax's placeholder): a failed read names none."""
  leaves, treedef = jax.tree_util.tree_flatten(stored)
  names = [_describe(p) for p, _ in jax.tree_util.tree_leaves_with_path(stored)]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  reader = ocp.PyTreeCheckpointer()
  for i, leaf in enumerate(leaves):
    item = [ocp.PLACEHOLDER] * len(leaves)
    item[i] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    restore_args = [ocp.PLACEHOLDER] * len(leaves)
    restore_args[i] = ocp.ArrayRestoreArgs(global_shape=leaf.shape, dtype=leaf.dtype,
                                           sharding=device)
    try:
      reader.restore(step_dir, args=ocp.args.PyTreeRestore(
          item=treedef.unflatten(item), restore_args=treedef.unflatten(restore_args)))
    except Exception:  # pylint: disable=broad-except
      return names[i]
  return None


def restore(mngr: ocp.CheckpointManager, step: int, state):
  """Returns (state, pending) of checkpoint `step`, after checking it fits `state`."""
  where = f'of step {step} in {mngr.directory}'
  stored = _read(lambda: mngr.item_metadata(step)['state'].tree, where)
  problem = mismatch(stored, state)
  if problem:
    raise CheckpointError(
        f'The checkpoint {where} belongs to another model: {problem}. Use a new '
        f'--workdir for this config, or the config that wrote it.')
  restored = _read(
      lambda: mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state), pending=ocp.args.JsonRestore())), where,
      find_unreadable=lambda: _first_unreadable(
          os.path.join(mngr.directory, str(step), 'state'), stored))
  pending = [{k: np.float32(v) for k, v in m.items()} for m in restored['pending'] or []]
  return restored['state'], pending


def resolve_source(path: str) -> tuple[str, int]:
  """Turns a run's workdir, its `checkpoints` dir, or one step's dir into (dir, step)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  if not os.path.isdir(path):
    what = 'is a file' if os.path.exists(path) else 'does not exist'
    raise CheckpointError(f'init_from={path} {what}: give a run\'s workdir, its '
                          f'checkpoints directory or one step\'s directory.')
  steps = ocp.utils.checkpoint_steps(path)
  if not steps:
    raise CheckpointError(f'init_from={path} holds no complete checkpoint: give a run\'s '
                          f'workdir, its checkpoints directory or one step\'s directory.')
  return path, max(steps)


def load_weights(source: str, state):
  """`state` with the parameters and BatchNorm statistics of another run's checkpoint.

  The step and optimizer state stay fresh: a warm start, not a resume.
  """
  directory, step = resolve_source(source)
  where = f'of step {step} in {directory}'
  # 'pending' is named, though not restored, so that Orbax does not warn of an item it
  # cannot read.
  mngr = ocp.CheckpointManager(directory, item_handlers={
      'state': ocp.PyTreeCheckpointHandler(), 'pending': ocp.JsonCheckpointHandler()})
  fix = 'give init_from another checkpoint'
  stored = _read(lambda: mngr.item_metadata(step)['state'].tree, where, fix)
  weights = {'params': state.params, 'batch_stats': state.batch_stats}
  problem = mismatch({k: stored.get(k, {}) for k in weights}, weights)
  if problem:
    raise CheckpointError(f'init_from: the checkpoint {where} does not fit this model: '
                          f'{problem}.')
  try:
    restored = _read(lambda: mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=weights,
            restore_args=jax.tree_util.tree_map(
                lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), weights),
            partial_restore=True))), where, fix,
        find_unreadable=lambda: _first_unreadable(
            os.path.join(directory, str(step), 'state'), stored))
  finally:
    mngr.close()
  weights = restored['state']
  return state.replace(params=weights['params'], batch_stats=weights['batch_stats'])
