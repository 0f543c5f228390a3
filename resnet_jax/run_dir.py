"""A run's directory: writable before any work is done, and held by one process at a time."""

import contextlib
import fcntl
import json
import os
import socket

from resnet_jax import config_lib

LOCK = '.lock'
# The files of a run's directory and of a sweep's, by name: every writer and reader of
# one imports its name from here.
CONFIG_FILE = 'config.json'  # The run's config (train.py).
METRICS_FILE = 'metrics.jsonl'  # Its records (metrics_io.py).
DIVERGED_FILE = 'diverged.json'  # A sweep cell that diverged (sweep/worker.py).
LAYER_ANALYSIS_FILE = 'analysis.json'  # A trained cell's layer analysis (analysis/layers.py).
SWEEP_RECORD = 'ablation.json'  # A sweep's ablation config: what marks its directory.
SWEEP_LAYER_ANALYSES = 'layer_analyses.json'  # The report's list of its cells' analyses.


def check_local(path: str, flag: str = '--workdir') -> None:
  """Refuses a URL (gs://...) where a run writes its files, which would land in a local
  directory named `gs:`, lost with the VM."""
  if '://' in path:
    raise config_lib.ConfigError(
        f'{flag}={path} is a URL, and runs write only to directories: give a local path, '
        'or a bucket mounted as a directory (Cloud Storage FUSE) or a shared filesystem '
        'that every host sees.')


def check_writable(workdir: str) -> None:
  """Creates `workdir` and makes sure it is writable, before any work is done."""
  check_local(workdir)
  if not workdir:
    raise config_lib.ConfigError('--workdir is empty: name the directory the run writes to.')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_lib.ConfigError(f'The workdir {workdir} is a file, not a directory: choose '
                                 'another --workdir.')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise config_lib.ConfigError(f'The workdir {workdir} is not writable '
                                 f'({e.strerror}): choose another --workdir.') from e


def saved_steps(workdir: str) -> list[int]:
  """The steps of a run's complete checkpoints, read from the directory names alone (Orbax
  names a step's directory by its number once it is complete)."""
  saved = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(saved):
    return []
  return sorted(int(name) for name in os.listdir(saved) if name.isdigit())


def newest_step(workdir: str) -> int | None:
  """The step of a run's newest complete checkpoint (None: none, or deleted to free disk),
  without restoring anything."""
  return max(saved_steps(workdir), default=None)


def holds_results(workdir: str) -> bool:
  """Whether `workdir` keeps something of a run: a complete checkpoint, a logged record or
  a divergence. One that does not (its attempt failed or was stopped before any) has
  nothing that another config could mix with."""
  if saved_steps(workdir):
    return True
  if os.path.exists(os.path.join(workdir, DIVERGED_FILE)):
    return True
  metrics = os.path.join(workdir, METRICS_FILE)
  return os.path.exists(metrics) and os.path.getsize(metrics) > 0


def config_changes(workdir: str, config) -> list[str] | None:
  """How `config` differs from the run saved in `workdir` (config_lib.config_changes'
  lines; ['config.json: unreadable'] for a file that is not JSON), or None where none is
  saved. The one check of a saved config: a run's own (train.remember_config) and a
  sweep's of its cells before any starts (sweep/ablation.check_cell_configs)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return config_lib.config_changes(json.load(f), json.loads(config.to_json_best_effort()))
  except ValueError:
    return ['config.json: unreadable']


@contextlib.contextmanager
def replacing(path: str):
  """Yields a temporary path beside `path` (same extension) for the block to write, which
  then replaces `path` in one step: a reader, or another writer (shards reporting into one
  sweep directory), never sees it half-written; a failed block leaves `path` as it was."""
  root, ext = os.path.splitext(path)
  tmp = f'{root}.{socket.gethostname()}-{os.getpid()}.tmp{ext}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Writes `text` into `path` through `replacing`."""
  with replacing(path) as tmp, open(tmp, 'w') as f:
    f.write(text)


@contextlib.contextmanager
def exclusive(workdirs, lock: str = LOCK):
  """Holds `workdirs` for this process until the block ends, so that a second run started
  in one of them (the same command twice, a sweep relaunched while it runs) is refused
  instead of writing beside the first. A killed process's lock goes with it."""
  with contextlib.ExitStack() as stack:
    for workdir in workdirs:
      f = stack.enter_context(open(os.path.join(workdir, lock), 'a+'))
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        raise config_lib.ConfigError(
            f'Another process{f" (pid {holder})" if holder else ""} is running in '
            f'{workdir}: wait for it to end or stop it, or choose another '
            f'--workdir.') from None
      f.truncate(0)
      f.write(str(os.getpid()))
      f.flush()
    yield
