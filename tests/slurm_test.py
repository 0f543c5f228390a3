"""The sweep on a real SLURM cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd
and munged, private to the test session): the same cells as the local launcher, a
requeued task and one past its time limit resuming from their checkpoints, a failed
task named with its log while the others finish, a driver that re-attaches, and a
two-process run under srun."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from resnet_jax import metrics_io
from resnet_jax.sweep import slurm as slurm_lib
from tests.conftest import REPO
from tests.resume_test import comparable_metrics


def tiny_ablation(tmp_path, data_dir, shortcuts=('none', 'A'), steps=4, **slurm):
  """An ablation config of depth-8, width-4 cells on the small Fashion-MNIST, and its
  SLURM resources (a CPU each, quick polls)."""
  resources = {'partition': '', 'nodes': 1, 'tasks_per_node': 1, 'gpus_per_task': 0,
               'cpus_per_task': 1, 'mem_gb': 0.0, 'timeout_min': 10,
               'array_parallelism': 8, 'max_requeues': 3, 'signal_delay_s': 60,
               'sbatch_options': '', 'setup': '', 'poll_seconds': 0.5, **slurm}
  cfg = tmp_path / 'tiny_ablation.py'
  cfg.write_text(f'''
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.preset, c.run_config, c.depths = 'tiny', 'fashion_mnist.py', (8,)
  c.shortcuts, c.seeds = {tuple(shortcuts)!r}, (0,)
  c.analysis_examples, c.paper_table, c.exclude = 32, False, ()
  c.slurm = ml_collections.ConfigDict({resources!r})
  c.overrides = ml_collections.ConfigDict({{
      'model': {{'num_filters': 4}}, 'data': {{'data_dir': {data_dir!r}, 'validation_size': 100}},
      'batch_size': 32, 'eval_batch_size': 100, 'num_train_steps': {steps}, 'log_every_steps': 2,
      'eval_every_steps': {steps}, 'checkpoint_every_steps': 2}})
  return c
''')
  return str(cfg)


def sweep(cfg, workdir, env, *flags, launcher='slurm', **kw):
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
       f'--workdir={workdir}', f'--launcher={launcher}', '--progress_every=1', *flags],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=240):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def untimed_table(workdir):
  """The report's table less its column of times."""
  rows = [line.split('|') for line in (workdir / 'results.md').read_text().splitlines()
          if line.startswith('|')]
  column = [c.strip() for c in rows[0]].index('time / run (s)')
  return [r[:column] + r[column + 1:] for r in rows]


def cluster_env(cluster):
  return dict(cluster.env, JAX_DISABLE_MOST_OPTIMIZATIONS='1')


def task_ids(workdir):
  """{unit: its SLURM job or array task} of the sweep's last submission (submitit
  submits a single unit as a plain job, several as an array)."""
  last = json.loads((workdir / slurm_lib.JOBS_FILE).read_text())['submissions'][-1]
  if len(last['units']) == 1:
    return {last['units'][0]: last['job_id']}
  return {u: f'{last["job_id"]}_{i}' for i, u in enumerate(last['units'])}


def wait_for_step(cell_dir, step, proc, timeout=180):
  """Waits until the cell has logged `step` (and is not finished)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    records = metrics_io.read_records(str(cell_dir))
    assert not any(r['split'] == 'run' for r in records), 'finished before the signal'
    train = [r for r in records if r['split'] == 'train']
    if train and train[-1]['step'] >= step:
      return train[-1]['step']
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.1)
  raise TimeoutError(f'{cell_dir} did not reach step {step}')


LONG = 60  # Steps of the cells that are interrupted mid-way.


@pytest.fixture(scope='module')
def local_sweep(fashion_data_dir, tmp_path_factory):
  """The tiny grid of LONG steps, trained by the local launcher without a stop."""
  tmp = tmp_path_factory.mktemp('local')
  cfg = tiny_ablation(tmp, fashion_data_dir, steps=LONG)
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  rc, _, err = finish(sweep(cfg, tmp / 'sweep', env, launcher='local'))
  assert rc == 0, err[-3000:]
  return tmp / 'sweep'


def signal_task(cluster, workdir, unit, command):
  subprocess.run([*command, task_ids(workdir)[unit]], env=cluster.env, check=True)


def test_a_sweep_through_slurm_equals_the_local_one_through_requeues_and_time_limits(
    slurm_cluster, fashion_data_dir, tmp_path, local_sweep):
  """resnetA-8's task is requeued by hand mid-cell, then warned of its time limit
  twice (SLURM's SIGUSR2, sent here at once by scancel --signal instead of at
  slurmctld's next 30-second check): it requeues itself once, then stops with its
  checkpoint as max_requeues=2 says, and the command run again finishes it. Both cells
  end bitwise as the local launcher's (each task's oneDNN on the node's two cores, as
  the local worker's)."""
  cfg = tiny_ablation(tmp_path, fashion_data_dir, steps=LONG, max_requeues=2)
  workdir, cell = tmp_path / 'sweep', tmp_path / 'sweep' / 'resnetA-8-seed0'
  env = cluster_env(slurm_cluster)
  proc = sweep(cfg, workdir, env)
  step = wait_for_step(cell, 10, proc)
  signal_task(slurm_cluster, workdir, 'resnetA-8-seed0', ['scontrol', 'requeue'])
  for _ in range(2):
    step = wait_for_step(cell, step + 10, proc)
    signal_task(slurm_cluster, workdir, 'resnetA-8-seed0', ['scancel', '--signal=USR2'])
  rc, out, err = finish(proc)
  assert rc == 1
  assert re.search(r'Submitted job array \d+ \(2 tasks, name resnet_jax-\w+\)', out), out
  assert re.search(r'^resnetA-8-seed0: pending \(task \d+_1, .*requeued 1x\)$', out, re.M)
  assert re.search(r'^plain-8-seed0: done$', out, re.M), out
  assert re.fullmatch(r'error: resnetA-8-seed0 failed: resnetA-8-seed0 is near its time '
                      r'limit again after 2 requeues, .*--slurm.timeout_min.* \(log: \S+\)\n',
                      err), err
  log = (workdir / 'resnetA-8-seed0.log').read_text()
  assert 'Stopped by SIGTERM after step' in log and 'requeued 1 time\n' in log
  assert re.search(r'Near its time limit: checkpointed, requeueing job \d+_1\.', log), log
  assert log.count('Resumed from the checkpoint of step') == 2
  rc, out, err = finish(sweep(cfg, workdir, env))  # Submits what is left.
  assert rc == 0, err[-3000:]
  assert '2 units in this shard: 1 finished, 0 with a SLURM task alive, 1 to submit.' in out
  for name in ('plain-8-seed0', 'resnetA-8-seed0'):
    threads = [[r['onednn_threads'] for r in metrics_io.read_records(str(d / name))
                if r['split'] == 'run'] for d in (local_sweep, workdir)]
    assert threads[0] == threads[1] == [2.0]
    assert comparable_metrics(str(workdir / name)) == comparable_metrics(
        str(local_sweep / name))
  assert untimed_table(workdir) == untimed_table(local_sweep)
  rc, out, err = finish(sweep(cfg, workdir, env))  # Nothing left to submit.
  assert rc == 0, err[-3000:]
  assert '2 units in this shard: 2 finished, 0 with a SLURM task alive, 0 to submit.' in out
  assert len(json.loads((workdir / slurm_lib.JOBS_FILE).read_text())['submissions']) == 2


def test_a_failed_task_is_named_with_its_log_and_a_stopped_driver_reattaches(
    slurm_cluster, fashion_data_dir, tmp_path):
  # plain-8's checkpoint is damaged (a real failure of a shared disk): its task fails on
  # it while resnetA-8's trains.
  cfg = tiny_ablation(tmp_path, fashion_data_dir, steps=LONG)
  workdir = tmp_path / 'sweep'
  env = cluster_env(slurm_cluster)
  damaged = workdir / 'plain-8-seed0' / 'checkpoints' / '2'
  damaged.mkdir(parents=True)
  (damaged / '_CHECKPOINT_METADATA').write_text('{not json')
  proc = sweep(cfg, workdir, env, start_new_session=True)
  wait_for_step(workdir / 'resnetA-8-seed0', 4, proc)
  proc.send_signal(signal.SIGHUP)  # Its terminal closed: the driver stops, its tasks go on.
  rc, _, err = finish(proc)
  assert rc == 1 and 'The driver stops; the SLURM jobs go on (squeue --me).' in err, err
  # As if it had died between sbatch and its record: the job is found by its name.
  record = json.loads((workdir / slurm_lib.JOBS_FILE).read_text())
  assert len(record['submissions']) == 1
  record['submissions'][0]['job_id'] = None
  (workdir / slurm_lib.JOBS_FILE).write_text(json.dumps(record))
  rc, out, err = finish(sweep(cfg, workdir, env))
  assert rc == 1
  # resnetA-8's task is alive (followed, not submitted again) or, on a loaded machine,
  # has finished meanwhile; plain-8's, if it has failed already, is submitted again (and
  # fails again).
  assert re.search(r'2 units in this shard: (0 finished, (1 with a SLURM task alive, 1 to '
                   r'submit|2 with a SLURM task alive, 0 to submit)|1 finished, (0 with a '
                   r'SLURM task alive, 1 to submit|1 with a SLURM task alive, 0 to '
                   r'submit))\.', out), out
  submissions = json.loads((workdir / slurm_lib.JOBS_FILE).read_text())['submissions']
  assert [s['units'] for s in submissions[1:]] in ([], [['plain-8-seed0']])
  assert re.fullmatch(r'error: plain-8-seed0 failed: The checkpoint of step 2 .* cannot be '
                      r'read .* \(log: \S+plain-8-seed0\.log\)\n', err), err
  assert [r['step'] for r in metrics_io.read_records(str(workdir / 'resnetA-8-seed0'))
          if r['split'] == 'run'] == [LONG]
  status = subprocess.run(
      [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
       f'--workdir={workdir}', '--launcher=slurm', '--status'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert status.returncode == 0, status.stderr[-2000:]
  assert status.stdout.splitlines()[-2:] == ['plain-8-seed0: failed', 'resnetA-8-seed0: done']


def test_a_two_process_run_under_srun_equals_the_one_process_run(
    slurm_cluster, fashion_data_dir, tmp_path):
  # Each process has 2 CPU devices and finds the other through jax.distributed from
  # SLURM's environment (--distributed); one process with 4 devices is the reference.
  from tests import multihost_test
  steps = 12
  extra = (f'--config.num_train_steps={steps}',)
  single = subprocess.run(
      multihost_test.command(fashion_data_dir, tmp_path / 'one', *extra),
      cwd=REPO, env=multihost_test.env_with_devices(4), capture_output=True, text=True,
      timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  env = dict(multihost_test.env_with_devices(2), SLURM_CONF=slurm_cluster.conf)
  two = subprocess.run(
      ['srun', '--ntasks=2', '--cpus-per-task=1', '--kill-on-bad-exit=1',
       *multihost_test.command(fashion_data_dir, tmp_path / 'two', *extra, '--distributed')],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, two.stderr[-3000:]
  assert 'Joining the cluster JAX finds' in two.stdout
  assert 'All 2 processes joined; this is process 0.' in two.stdout
  assert 'All 2 processes joined; this is process 1.' in two.stdout
  assert 'on 4 cpu device(s)' in two.stdout
  one_losses = multihost_test.losses(tmp_path / 'one')
  assert len(one_losses) == steps
  np.testing.assert_allclose(multihost_test.losses(tmp_path / 'two'), one_losses, rtol=1e-5)


def test_a_sweep_task_of_two_processes_trains_its_cell_over_both(
    slurm_cluster, fashion_data_dir, tmp_path):
  """tasks_per_node=2 (the imagenet preset asks for two nodes): the task's processes
  join through jax.distributed before they train, one device each, and process 0
  writes the unit's log."""
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('A',), tasks_per_node=2)
  rc, out, err = finish(sweep(cfg, tmp_path / 'sweep', cluster_env(slurm_cluster)))
  assert rc == 0, err[-3000:]
  log = (tmp_path / 'sweep' / 'resnetA-8-seed0.log').read_text()
  assert '4 steps of batch 32 on 2 cpu device(s)' in log
  assert log.count('Final (step 4)') == 1
  assert re.search(r'^resnetA-8-seed0: done$', out, re.M), out


def test_a_failed_task_is_told_by_its_own_part_of_the_units_log(tmp_path):
  """A unit's log gathers its tasks' output; a task that failed is named by its own part
  of it (from the log's size when it was submitted), never by an earlier task's error."""
  from resnet_jax.sweep import cells as cells_lib
  unit = [cells_lib.Cell(8, 'A', 0)]
  log = tmp_path / 'resnetA-8-seed0.log'
  log.write_text('error: an earlier task\'s damaged checkpoint\n')
  earlier = len(log.read_bytes())
  with open(log, 'a') as f:
    f.write('Traceback (most recent call last):\n  File "x.py", line 1\n'
            'RuntimeError: this task\'s own failure\n')
  launcher = slurm_lib.Launcher.__new__(slurm_lib.Launcher)
  launcher.workdir, launcher.logs = str(tmp_path), str(tmp_path / '.slurm')
  task = slurm_lib.Task(unit, '7', 0, launcher.logs, False, earlier)
  assert launcher.failure(task) == (f'resnetA-8-seed0 failed: RuntimeError: this task\'s '
                                    f'own failure (log: {log})')
  task.log_start = 0  # Read from the start, the earlier task's sentence would win.
  assert 'earlier task' in launcher.failure(task)
