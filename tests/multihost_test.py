"""Two processes (2 fake CPU devices each, localhost coordinator) train like one with 4,
stop together on SIGTERM to either or on Ctrl-C to one, continue from their shared checkpoint,
and once finished, stop together again when rerun."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np

from resnet_jax import metrics_io
from tests.conftest import REPO
from tests.main_test import SMALL

STEPS = 40


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# `python -m resnet_jax.main` with Python's Ctrl-C handler, as in a terminal (a test
# runner started in the background may pass SIGINT on ignored).
MAIN_AS_IN_A_TERMINAL = (
    'import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); '
    'runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)')


def command(data_dir, workdir, *extra):
  return [sys.executable, '-c', MAIN_AS_IN_A_TERMINAL, '--config=configs/fashion_mnist.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          f'--config.num_train_steps={STEPS}', '--config.data.augment=crop_flip', *SMALL,
          '--config.log_every_steps=1', *extra]


def env_with_devices(n):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', JAX_PLATFORMS='cpu')


def losses(workdir):
  return [r['loss'] for r in metrics_io.read_records(workdir) if r['split'] == 'train']


def start_two(data_dir, workdir):
  port = free_port()
  return [subprocess.Popen(
      command(data_dir, workdir, f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]


def test_two_processes_match_one_process_with_four_devices_through_a_preemption(
    fashion_data_dir, tmp_path):
  single = subprocess.run(command(fashion_data_dir, tmp_path / 'one'), cwd=REPO,
                          env=env_with_devices(4), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  # SIGTERM reaches process 1 only: both stop at one agreed step and save together.
  procs = start_two(fashion_data_dir, tmp_path / 'two')
  first_lines = []
  for line in procs[0].stdout:
    first_lines.append(line)
    if line.startswith('step 2/'):
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  out0 = ''.join(first_lines) + outs[0][0]
  assert 'on 4 cpu device(s)' in out0  # Process 0 reports for the whole run...
  assert 'Joining a 2-process run at 127.0.0.1:' in out0 and \
      'All 2 processes joined; this is process 0.\n' in out0
  assert 'All 2 processes joined; this is process 1.\n' in outs[1][0]
  quiet = [l for l in outs[1][0].splitlines() if l.startswith(('step ', 'Final', 'Compiled'))]
  assert not quiet  # ...and process 1 stays quiet.
  assert 'Stopped by SIGTERM after step' in out0
  stopped = int(out0.split('Stopped by SIGTERM after step ')[1].split(':')[0])
  assert 2 <= stopped < STEPS
  assert os.listdir(tmp_path / 'two' / 'checkpoints') == [str(stopped)]

  # Resumed, then Ctrl-C to process 1 alone while the processes set up (before their
  # first step): one agreed step again, not a process dying alone while the other waits
  # for it. (Ctrl-C to both in their steps takes the same path.)
  procs = start_two(fashion_data_dir, tmp_path / 'two')
  first_lines = []
  for line in procs[0].stdout:
    first_lines.append(line)
    if 'on 4 cpu device(s)' in line:  # Data read, state initialised; next: compiling.
      procs[1].send_signal(signal.SIGINT)
      break
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  out0 = ''.join(first_lines) + outs[0][0]
  assert f'Resumed from the checkpoint of step {stopped}' in out0
  assert 'Ctrl-C: every process of the run stops at its next step' in outs[1][1]
  assert 'Stopped by SIGTERM after step' in out0  # Process 0 heard it from process 1.
  interrupted = int(out0.split('Stopped by SIGTERM after step ')[1].split(':')[0])
  assert stopped < interrupted < STEPS
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints'), key=int) == [
      str(stopped), str(interrupted)]

  procs = start_two(fashion_data_dir, tmp_path / 'two')
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert f'Resumed from the checkpoint of step {interrupted}' in outs[0][0]
  assert len(losses(tmp_path / 'one')) == len(losses(tmp_path / 'two')) == STEPS
  np.testing.assert_allclose(losses(tmp_path / 'two'), losses(tmp_path / 'one'), rtol=1e-5)

  # Once finished, both processes see it and stop together, rewriting nothing.
  with open(tmp_path / 'two' / 'metrics.jsonl') as f:
    logged = f.read()
  procs = start_two(fashion_data_dir, tmp_path / 'two')
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert f'finished its {STEPS} steps already' in outs[0][0]
  with open(tmp_path / 'two' / 'metrics.jsonl') as f:
    assert f.read() == logged
