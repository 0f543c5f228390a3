"""Where a run's numbers go: TensorBoard events (clu), `metrics.jsonl`, `config.json`."""

import json
import os
import time

import jax


class MetricsLog:
  """Writes each record to TensorBoard and as one JSON line; only process 0 writes."""

  def __init__(self, workdir: str, resume_step: int = 0, final_step: int | None = None):
    """Resuming at `resume_step` drops the records after it; at `final_step` (the run's
    last), also its final evaluation's, from an attempt killed while it ran."""
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    # Imported here: clu's writers import TensorFlow, which only a logging run needs (not
    # the train step, its benchmark, or a machine that has no TensorFlow).
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.active, asynchronous=False)
    if self.active:
      _truncate_after(self.path, resume_step, final_step)

  def write(self, step: int, split: str, metrics: dict):
    metrics = {k: float(v) for k, v in metrics.items()}
    self.writer.write_scalars(step, {f'{split}/{k}': v for k, v in metrics.items()})
    if self.active:
      record = {'step': int(step), 'split': split, 'time': time.time(), **metrics}
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')

  def write_hparams(self, hparams: dict):
    self.writer.write_hparams(hparams)

  def close(self):
    self.writer.flush()
    self.writer.close()


def _truncate_after(path: str, step: int, final_step: int | None = None):
  """Drops records past `step`, which belong to an attempt that died before its checkpoint,
  and the evaluations at `final_step` (only the final evaluation writes any there)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
      if record['step'] <= step and not (record['step'] == final_step
                                         and record['split'] != 'train'):
        keep.append(line)
    except (ValueError, KeyError):
      continue  # A line cut short by a kill.
  if len(keep) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def final_metrics(workdir: str, step: int) -> dict | None:
  """{'validation': ..., 'test': ...} of a run that ended at `step` (its 'run' record is
  written last), or None if it has not: a rerun of a finished run has nothing to redo."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  final = {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # A line cut short by a kill.
      if record.get('step') == step and record.get('split') in ('validation', 'test', 'run'):
        final[record['split']] = {k: v for k, v in record.items()
                                  if k not in ('step', 'split', 'time')}
  return final if 'run' in final else None


def flat_hparams(config) -> dict:
  """The config flattened to {'model.depth': 20, ...} with scalar values only."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if hasattr(value, 'items'):
        walk(name + '.', value)
      elif isinstance(value, (bool, int, float, str)):
        out[name] = value
      elif value is None:
        out[name] = 'None'
      else:
        out[name] = str(value)

  walk('', config)
  return out
