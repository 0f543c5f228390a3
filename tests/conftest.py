"""Shared test set-up: fast compiles, and a small real Fashion-MNIST in a temporary TFDS dir."""

import os

import jax
import pytest

jax.config.update('jax_disable_most_optimizations', True)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST_DIR = os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist')
SUBSET = 600


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


def override(config, **overrides):
  """Sets dotted keys ('model.depth': 8) in a config; returns it."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config
