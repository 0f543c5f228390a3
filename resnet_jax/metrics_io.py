"""Where a run's numbers go: TensorBoard events, `metrics.jsonl`, `config.json`."""

import itertools
import json
import os
import socket
import time

from resnet_jax import run_dir


class EventFile:
  """A TensorBoard event file of scalars and hyper-parameters, written without
  TensorFlow (whose import alone takes seconds), in TensorBoard's own record format."""

  def __init__(self, workdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer import record_writer
    # pylint: enable=g-import-not-at-top
    self._event_pb2, self._summary_pb2, self._hparams_summary = (
        event_pb2, summary_pb2, summary_v2)
    stem = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    for i in itertools.count():  # Each run in one process and second gets a file of its own.
      try:
        self._file = open(os.path.join(workdir, f'{stem}.{i}.v2'), 'xb')
        break
      except FileExistsError:
        continue
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def _write(self, event):
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._file.flush()

  def scalars(self, step: int, values: dict):
    value = self._summary_pb2.Summary.Value
    summary = self._summary_pb2.Summary(value=[value(tag=k, simple_value=v)
                                               for k, v in values.items()])
    self._write(self._event_pb2.Event(step=step, summary=summary))

  def hparams(self, hparams: dict):
    """The run's hyper-parameters, for TensorBoard's HParams view."""
    self._write(self._event_pb2.Event(step=0, summary=self._hparams_summary.hparams_pb(hparams)))

  def restart(self, step: int):
    """Marks where a run (re)starts: TensorBoard drops the workdir's older events from
    `step` on, those an attempt killed after its last checkpoint (or before its first)
    logged, as `_truncate_after` drops its records."""
    log = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
    self._write(self._event_pb2.Event(step=step, session_log=log))

  def close(self):
    self._file.close()


class MetricsLog:
  """Writes each record to TensorBoard and as one JSON line; only process 0 writes."""

  def __init__(self, workdir: str, resume_step: int = 0, final_step: int | None = None):
    """Resuming at `resume_step` drops the records after it; at `final_step` (the run's
    last), also its final evaluation's, from an attempt killed while it ran."""
    import jax  # Here: the readers below serve processes without JAX (a sweep's driver).
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, run_dir.METRICS_FILE)
    self.events = None
    if self.active:
      _truncate_after(self.path, resume_step, final_step)
      self.events = EventFile(workdir)
      self.events.restart(resume_step + 1)

  def write(self, step: int, split: str, metrics: dict):
    metrics = {k: float(v) for k, v in metrics.items()}
    if self.active:
      self.events.scalars(step, {f'{split}/{k}': v for k, v in metrics.items()})
      record = {'step': int(step), 'split': split, 'time': time.time(), **metrics}
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')

  def write_hparams(self, hparams: dict):
    if self.active:
      self.events.hparams(hparams)

  def close(self):
    if self.active:
      self.events.close()


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
    run_dir.write_text(path, ''.join(keep))


def read_records(workdir: str) -> list[dict]:
  """The whole records of a run's metrics.jsonl ([] if it has none): a line a kill cut
  short is left out."""
  path = os.path.join(workdir, run_dir.METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def final_metrics(workdir: str, step: int) -> dict | None:
  """{'validation': ..., 'test': ...} of a run that ended at `step` (its 'run' record is
  written last), or None if it has not: a rerun of a finished run has nothing to redo."""
  final = {r['split']: {k: v for k, v in r.items() if k not in ('step', 'split', 'time')}
           for r in read_records(workdir)
           if r.get('step') == step and r.get('split') in ('validation', 'test', 'run')}
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
