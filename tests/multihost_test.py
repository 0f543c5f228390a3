"""Two processes (2 fake CPU devices each, localhost coordinator) train like one with 4."""

import os
import socket
import subprocess
import sys

import numpy as np

from resnet_jax import metrics_io
from tests.conftest import REPO
from tests.main_test import SMALL


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def command(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'resnet_jax.main', '--config=configs/fashion_mnist.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.num_train_steps=3', '--config.data.augment=crop_flip', *SMALL,
          '--config.log_every_steps=1', *extra]


def env_with_devices(n):
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', JAX_PLATFORMS='cpu')


def losses(workdir):
  return [r['loss'] for r in metrics_io.read_metrics(workdir) if r['split'] == 'train']


def test_two_processes_match_one_process_with_four_devices(fashion_data_dir, tmp_path):
  single = subprocess.run(command(fashion_data_dir, tmp_path / 'one'), cwd=REPO,
                          env=env_with_devices(4), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
  procs = [subprocess.Popen(
      command(fashion_data_dir, tmp_path / 'two', f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'on 4 cpu device(s)' in outs[0][0]  # Process 0 reports for the whole run...
  quiet = [l for l in outs[1][0].splitlines() if l.startswith(('step ', 'Final', 'Compiled'))]
  assert not quiet  # ...and process 1 stays quiet.
  np.testing.assert_allclose(losses(tmp_path / 'two'), losses(tmp_path / 'one'), rtol=1e-5)
  assert len(losses(tmp_path / 'one')) == 3
