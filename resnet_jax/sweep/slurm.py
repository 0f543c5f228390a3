"""The sweep on a SLURM cluster (--launcher=slurm): each unit one task of a submitit job
array, every task the same resumable run in WORKDIR/CELL on the shared filesystem.

How the driver knows where each task stands: `squeue` for the live states (pending,
running, requeued), and the cells' own run records for the outcome (done, diverged, or
not: failed). Without slurmdbd `sacct` knows nothing, and many clusters keep no
accounting a user may read; the run records are what the report reads anyway, and
they say "done" only for a run that finished. The driver records its submissions in
WORKDIR/.slurm_jobs.json before it submits, each with a name of its own, so that the
same command started again re-attaches to the jobs alive (found by that name even
where the driver died between sbatch and its record) and never submits a unit twice.
"""

import json
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
import uuid

from resnet_jax import config_lib
from resnet_jax import run_dir
from resnet_jax.durations import format_minutes
from resnet_jax.sweep import commands
from resnet_jax.sweep import runner
from resnet_jax.sweep import status as status_lib
from resnet_jax.sweep.cells import Cell, unit_cost, unit_name

JOBS_FILE = '.slurm_jobs.json'
LOGS = '.slurm'  # submitit's folder: each task's pickles and its stdout/stderr.
# SLURM's states of a job that is over; any other is alive (pending, running,
# completing, requeued, suspended, ...).
ENDED = {'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED', 'OUT_OF_MEMORY', 'NODE_FAIL',
         'BOOT_FAIL', 'DEADLINE', 'PREEMPTED', 'SPECIAL_EXIT'}
_INTS = {'nodes': 1, 'tasks_per_node': 1, 'cpus_per_task': 1, 'timeout_min': 1,
         'array_parallelism': 1, 'gpus_per_task': 0, 'max_requeues': 0,
         'signal_delay_s': 0}


def check_resources(ablation) -> None:
  """Refuses settings SLURM would refuse later, or that cannot work."""
  if 'slurm' not in ablation:
    raise config_lib.ConfigError(
        '--launcher=slurm: this ablation config has no `slurm` section (the tasks\' '
        'resources); copy the one of configs/ablation.py into it.')
  res = ablation.slurm
  for key, least in _INTS.items():
    if int(res[key]) < least:
      raise config_lib.ConfigError(f'--slurm.{key}={res[key]}: it must be at least {least}.')
  if res.mem_gb < 0:
    raise config_lib.ConfigError(f'--slurm.mem_gb={res.mem_gb}: give a size in GB, or 0 '
                                 'for the partition\'s default.')
  if res.signal_delay_s >= 60 * res.timeout_min:
    raise config_lib.ConfigError(
        f'--slurm.signal_delay_s={res.signal_delay_s} is not shorter than the time limit '
        f'(--slurm.timeout_min={res.timeout_min}): the warning would come at the start.')
  sbatch_options(res)


def sbatch_options(res) -> dict:
  """--slurm.sbatch_options ('--qos=high --exclusive') as submitit's additional sbatch
  parameters ({'qos': 'high', 'exclusive': True})."""
  out = {}
  for word in shlex.split(res.sbatch_options):
    name, eq, value = word.partition('=')
    if not name.startswith('--') or len(name) < 3:
      raise config_lib.ConfigError(
          f'--slurm.sbatch_options: {word!r} is not a long sbatch flag; give them as '
          '--name=value or --name, separated by spaces.')
    out[name[2:].replace('-', '_')] = value if eq else True
  return out


def parameters(res) -> dict:
  """submitit's SlurmExecutor parameters of a unit's task."""
  params = {
      'job_name': 'resnet_jax', 'nodes': res.nodes, 'ntasks_per_node': res.tasks_per_node,
      'cpus_per_task': res.cpus_per_task, 'time': res.timeout_min,
      'array_parallelism': res.array_parallelism, 'signal_delay_s': res.signal_delay_s,
      'wckey': None,  # submitit's default names one, which some clusters refuse.
      'additional_parameters': {'requeue': True, **sbatch_options(res)},
  }
  if res.partition:
    params['partition'] = res.partition
  if res.gpus_per_task:
    params['gpus_per_task'] = res.gpus_per_task
  if res.mem_gb:
    params['mem'] = f'{int(res.mem_gb * 1024)}MB'
  if res.setup:
    params['setup'] = [res.setup]
  return params


def print_dry_run(res, workdir: str, units: list[list[Cell]]):
  """The sbatch script each array task would run, then the tasks."""
  from submitit.slurm import slurm as submitit_slurm
  folder = os.path.join(os.path.abspath(workdir), LOGS)
  script = submitit_slurm._make_sbatch_string(  # pylint: disable=protected-access
      command=f'{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}',
      folder=folder, map_count=max(len(units), 1), **parameters(res))
  with commands.piped():
    print(f'One job array of {len(units)} task{"s" * (len(units) != 1)}, each submitted '
          f'as:\n{script}')
    for i, unit in enumerate(units):
      cells = '/'.join(status_lib.cell_status(os.path.join(workdir, c.name)) for c in unit)
      print(f'task {i}: {unit_name(unit):28s} {cells}')


def load_record(workdir: str) -> dict:
  try:
    with open(os.path.join(workdir, JOBS_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {'submissions': []}
  except ValueError as e:
    raise config_lib.ConfigError(f'{os.path.join(workdir, JOBS_FILE)} is not the '
                                 f'driver\'s record ({e}): move it away only once no '
                                 'job of this sweep is queued (squeue).') from None


def save_record(workdir: str, record: dict):
  run_dir.write_text(os.path.join(workdir, JOBS_FILE), json.dumps(record, indent=1))


def _squeue(args: list[str]) -> list[list[str]]:
  """`squeue` lines (array tasks one by one) as [task id, state, restarts, reason]."""
  out = subprocess.run(
      ['squeue', '--noheader', '--array', '-O',
       'JobArrayID:40,State:24,RestartCnt:8,Reason:200', *args],
      capture_output=True, text=True, timeout=120)
  if out.returncode:
    raise config_lib.ConfigError(f'squeue failed ({out.stderr.strip()[:300]}): is this a '
                                 'SLURM login node, with the cluster reachable?')
  return [line.split(None, 3) for line in out.stdout.splitlines() if line.strip()]


def find_job(tag: str) -> str | None:
  """The array job id of the submission named `tag`, if any of it is queued."""
  for fields in _squeue(['--name', tag]):
    return fields[0].split('_')[0]
  return None


class Task:
  """One unit's latest task: its job array task id and what squeue last said."""

  def __init__(self, unit: list[Cell], job_id: str, index: int, logs: str, array: bool,
               log_start: int = 0):
    # submitit submits a single unit as a plain job, several as an array. `log_start`:
    # the unit log's size at submission, where this task's part of it begins.
    self.unit, self.name, self.log_start = unit, unit_name(unit), log_start
    self.task_id = f'{job_id}_{index}' if array else job_id
    self.stdout = os.path.join(logs, f'{self.task_id}_0_log.out')
    self.stderr = os.path.join(logs, f'{self.task_id}_0_log.err')
    self.state, self.restarts, self.reason, self.shown = 'PENDING', 0, '', None


class Launcher:
  """Submits the units not finished nor alive, then follows their tasks to the end."""

  def __init__(self, workdir: str, ablation, units: list[list[Cell]], steps: dict,
               progress_every: float):
    self.workdir, self.ablation, self.units = workdir, ablation, units
    self.res, self.steps, self.progress_every = ablation.slurm, steps, progress_every
    self.logs = os.path.join(os.path.abspath(workdir), LOGS)
    self.record = load_record(workdir)
    self.tasks: dict[str, Task] = {}
    self.clock = runner.Clock(1)

  def done(self, unit) -> bool:
    return all(status_lib.cell_status(os.path.join(self.workdir, c.name))
               in ('done', 'diverged') for c in unit)

  def attach(self):
    """The latest task of every unit in the record; ids found by name where missing."""
    by_name = {unit_name(u): u for u in self.units}
    for submission in self.record['submissions']:
      if submission.get('job_id') is None:
        submission['job_id'] = find_job(submission['tag'])
        if submission['job_id'] is None:
          continue  # Never reached SLURM.
        save_record(self.workdir, self.record)
      for index, name in enumerate(submission['units']):
        if name in by_name:
          self.tasks[name] = Task(by_name[name], submission['job_id'], index, self.logs,
                                  len(submission['units']) > 1,
                                  submission.get('log_sizes', {}).get(name, 0))
    self.poll()

  def poll(self):
    """squeue's word on every task followed; a task squeue no longer lists has ended.
    (The user's jobs, not `--jobs`: squeue refuses a list with a job it has forgotten.)"""
    if not self.tasks:
      return
    seen = {fields[0]: fields for fields in
            _squeue(['--user', pwd.getpwuid(os.getuid()).pw_name])}
    for task in self.tasks.values():
      if task.task_id in seen:
        _, task.state, restarts, *reason = seen[task.task_id] + ['']
        task.restarts, task.reason = int(restarts or 0), reason[0].strip()
      elif task.state not in ENDED:
        task.state = 'ENDED'

  def alive(self, task: Task) -> bool:
    return task.state not in ENDED and task.state != 'ENDED'

  def submit(self, todo: list[list[Cell]]):
    """One job array for `todo`, recorded under its name before sbatch sees it."""
    import submitit
    from resnet_jax.sweep import slurm_task
    tag = f'resnet_jax-{uuid.uuid4().hex[:10]}'
    logs = [os.path.join(self.workdir, f'{unit_name(u)}.log') for u in todo]
    submission = {'tag': tag, 'job_id': None, 'units': [unit_name(u) for u in todo],
                  'time': time.time(),
                  'log_sizes': {unit_name(u): os.path.getsize(log) if os.path.exists(log)
                                else 0 for u, log in zip(todo, logs)}}
    self.record['submissions'].append(submission)
    save_record(self.workdir, self.record)
    executor = submitit.SlurmExecutor(folder=self.logs, max_num_timeout=0)
    params = parameters(self.res)
    params['job_name'] = tag
    executor.update_parameters(**params)
    jobs = executor.map_array(
        slurm_task.run_unit, [self.ablation] * len(todo), [[c.name for c in u] for u in todo],
        [os.path.abspath(self.workdir)] * len(todo), [self.res.max_requeues] * len(todo))
    submission['job_id'] = jobs[0].job_id.split('_')[0]
    save_record(self.workdir, self.record)
    for index, unit in enumerate(todo):
      self.tasks[unit_name(unit)] = Task(unit, submission['job_id'], index, self.logs,
                                         len(todo) > 1,
                                         submission['log_sizes'][unit_name(unit)])
    kind = f'job array {submission["job_id"]} ({len(todo)} tasks' if len(todo) > 1 else \
        f'job {submission["job_id"]} (1 task'
    print(f'Submitted {kind}, name {tag}); logs in {self.logs}.', flush=True)

  def plan(self) -> list[list[Cell]]:
    """Attaches to the record's tasks; returns the units to submit: not finished, and no
    task of theirs alive."""
    self.attach()
    todo = [u for u in self.units if not self.done(u)]
    alive = [u for u in todo if unit_name(u) in self.tasks
             and self.alive(self.tasks[unit_name(u)])]
    print(f'{len(self.units)} units in this shard: {len(self.units) - len(todo)} finished, '
          f'{len(alive)} with a SLURM task alive, {len(todo) - len(alive)} to submit.',
          flush=True)
    return [u for u in todo if u not in alive]

  def status_line(self, task: Task) -> str:
    """Where a unit's task stands (its steps: the progress lines): done/diverged,
    pending (why, requeued how often), running, ..., or failed."""
    if self.done(task.unit):
      states = {status_lib.cell_status(os.path.join(self.workdir, c.name)) for c in task.unit}
      return '/'.join(sorted(states))
    if self.alive(task):
      again = f', requeued {task.restarts}x' if task.restarts else ''
      why = f', {task.reason}' if task.reason and task.reason != 'None' else ''
      return f'{task.state.lower()} (task {task.task_id}{why}{again})'
    return 'failed'

  def failure(self, task: Task) -> str:
    """A failed task's one line: its error in the unit's log (this task's part of it, not
    an earlier task's) or in submitit's, else SLURM's last state."""
    unit_log = os.path.join(self.workdir, f'{task.name}.log')
    for log, start in ((unit_log, task.log_start), (task.stderr, 0)):
      line, _ = runner.error_line(log, start)
      if line:
        return f'{task.name} failed: {line} (log: {log})'
    last = task.state if task.state != 'ENDED' else 'its task ended'
    return (f'{task.name} failed: {last.lower()} before its cells finished (logs: '
            f'{unit_log}, {task.stderr})')

  def follow(self):
    """Prints each task's state as it changes and, every --progress_every seconds, the
    running cells' steps and an ETA, until no task of the shard is alive."""
    shown_progress = time.perf_counter()
    while True:
      for task in self.tasks.values():
        line = self.status_line(task)
        if line != task.shown:
          task.shown = line
          print(self.failure(task) if line == 'failed' else f'{task.name}: {line}',
                flush=True)
      if not any(self.alive(t) and not self.done(t.unit) for t in self.tasks.values()):
        return
      if time.perf_counter() - shown_progress >= self.progress_every:
        shown_progress = time.perf_counter()
        self.show_progress()
      time.sleep(self.res.poll_seconds)
      self.poll()

  def show_progress(self):
    running = [t for t in self.tasks.values() if t.state == 'RUNNING' and not self.done(t.unit)]
    progress = [(t, status_lib.progress(os.path.join(self.workdir, t.unit[0].name),
                                        self.steps[t.unit[0]])) for t in running]
    parts = [f'{t.name} step {p[0]:,}/{p[1]:,}' for t, p in progress if p]
    if not parts:
      return
    queued = [unit_cost(t.unit) for t in self.tasks.values()
              if self.alive(t) and t.state != 'RUNNING']
    self.clock.workers = max(len(running), 1)
    eta = self.clock.eta([(unit_cost(t.unit), 0.0, p) for t, p in progress], queued)
    done = sum(self.done(u) for u in self.units)
    print(f'running: {", ".join(parts)}; {done}/{len(self.units)} done'
          + (f', ETA {format_minutes(eta)}' if eta is not None else ''), flush=True)


def run(ablation, workdir: str, units: list[list[Cell]], steps: dict,
        progress_every: float, status_only: bool = False):
  """--launcher=slurm: submits what is left of `units` as one job array and follows it
  (--status: only reports). Ctrl-C or a closed terminal leave the jobs running."""
  check_resources(ablation)
  launcher = Launcher(workdir, ablation, units, steps, progress_every)
  todo = launcher.plan()
  if status_only:
    for unit in units:
      task = launcher.tasks.get(unit_name(unit))
      line = launcher.status_line(task) if task else (
          'done' if launcher.done(unit) else 'not submitted')
      print(f'{unit_name(unit)}: {line}')
    return
  if todo:
    launcher.submit(todo)
  signal.signal(signal.SIGHUP, _detach)
  try:
    launcher.follow()
  except KeyboardInterrupt:
    sys.exit('The driver stops; the SLURM jobs go on (squeue --me). The same command '
             're-attaches to them, and adds --status to only report.')
  failed = [launcher.failure(launcher.tasks[unit_name(u)]) for u in units
            if not launcher.done(u) and unit_name(u) in launcher.tasks]
  if len(failed) == 1:
    raise runner.CellFailed(failed[0])
  if failed:
    raise runner.CellFailed(f'{len(failed)} units failed: ' + '; '.join(failed))


def _detach(signum, frame):
  del signum, frame
  raise KeyboardInterrupt('SIGHUP')
