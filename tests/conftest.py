"""Shared test set-up: fast compiles, one compilation cache per run, and a small real
Fashion-MNIST in a temporary TFDS dir."""

import os
import shutil
import tempfile

import jax
import pytest

jax.config.update('jax_disable_most_optimizations', True)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
SUBSET = 600
CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'  # JAX's own variable: subprocesses read it too.
_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, shared by the xdist workers
  and every subprocess a test starts: the suite's many small runs compile the same few
  programs, and a hit skips XLA's compile (a third of a small CLI run's time). The
  controller makes it (workers inherit the variable) and removes it at the end; a
  cache the user set is used and kept."""
  if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = config.stash[_OWN_CACHE] = tempfile.mkdtemp(
        prefix='resnet_jax_xla_cache_')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', os.environ[CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def pytest_unconfigure(config):
  if _OWN_CACHE in config.stash:
    shutil.rmtree(config.stash[_OWN_CACHE], ignore_errors=True)


@pytest.fixture(scope='session')
def fashion_data_dir(tmp_path_factory):
  """A TFDS data dir holding the first 600 train and test images of the real Fashion-MNIST."""
  if not os.path.isdir(FASHION_MNIST_DIR):
    pytest.fail(f'{FASHION_MNIST_DIR} is missing: run `make setup` (installs '
                'dataset-fashion-mnist) or set FASHION_MNIST_DIR.')
  from resnet_jax import datasets
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  datasets.import_fashion_mnist(FASHION_MNIST_DIR, data_dir, max_examples=SUBSET)
  return data_dir


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory, worker_id):
  """The session's real one-node SLURM cluster (tests/slurm_cluster.py), shared by the
  xdist workers. Skipped, with the reason, where it cannot run; never where
  RESNET_JAX_REQUIRE_SLURM is set (CI sets it)."""
  from tests import slurm_cluster as cluster_lib
  reason = cluster_lib.missing()
  if reason:
    if os.environ.get('RESNET_JAX_REQUIRE_SLURM'):
      pytest.fail(f'The SLURM tests cannot run: {reason}.')
    pytest.skip(f'SLURM tests skipped: {reason}.')
  base = tmp_path_factory.getbasetemp()
  if worker_id != 'master':  # Every worker's base is a directory of the session's.
    base = base.parent
  with cluster_lib.shared_cluster(str(base / 'slurm')) as cluster:
    yield cluster


def override(config, **overrides):
  """Sets dotted keys ('model.depth': 8) in a config; returns it."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config
