"""Data: the offline Fashion-MNIST import, TFDS mock data, batches by step, augmentation."""

import glob
import json
import logging
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax import datasets
from resnet_jax import input_pipeline
from tests.conftest import FASHION_MNIST_DIR, REPO, SUBSET


def test_fashion_mnist_import_is_a_real_tfds_dataset(fashion_data_dir, caplog):
  builder = datasets.get_builder('fashion_mnist', fashion_data_dir, download=False)
  # No TFDS warning of the official fashion_mnist folder, which is not there.
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  assert builder.info.splits['train'].num_examples == SUBSET
  splits = datasets.load_arrays('fashion_mnist', builder, validation_size=100)
  assert [len(splits[k]) for k in ('train', 'validation', 'test')] == [500, 100, SUBSET]
  assert splits['train'].images.shape[1:] == (28, 28, 1)
  assert splits['train'].images.dtype == np.uint8
  # The same pixels and labels as the IDX files, in order.
  idx = datasets.read_idx(os.path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz'))
  labels = datasets.read_idx(os.path.join(FASHION_MNIST_DIR, 'train-labels-idx1-ubyte.gz'))
  np.testing.assert_array_equal(splits['train'].images[..., 0], idx[:500])
  np.testing.assert_array_equal(splits['validation'].labels, labels[500:SUBSET])
  with open(os.path.join(datasets.local_fashion_mnist_dir(fashion_data_dir),
                         'checksums.json')) as f:
    record = json.load(f)
  assert record['splits']['train']['examples'] == 60000
  assert datasets.get_spec('fashion_mnist').train_examples == 60000  # Sweep estimates' count.
  assert record['splits']['test']['sha256'] == datasets.array_checksum(
      datasets.read_idx(os.path.join(FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')),
      datasets.read_idx(os.path.join(FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz')))


def test_decoded_splits_are_cached_and_a_bad_cache_is_ignored(fashion_data_dir):
  builder = datasets.get_builder('fashion_mnist', fashion_data_dir, download=False)
  first = datasets.load_split_arrays(builder, 'test')
  cache = os.path.join(str(builder.data_dir), 'test.arrays.npz')
  assert os.path.exists(cache)
  again = datasets.load_split_arrays(builder, 'test')
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, first.labels)
  with open(cache, 'wb') as f:
    f.write(b'not an npz file')
  rebuilt = datasets.load_split_arrays(builder, 'test')
  np.testing.assert_array_equal(rebuilt.images, first.images)
  with np.load(cache) as f:  # Rewritten whole.
    assert f['images'].shape == first.images.shape


def test_a_run_on_decoded_data_never_imports_tensorflow(fashion_data_dir, tmp_path):
  """TensorFlow's import alone takes seconds: only decoding a split the first time (or
  streaming one) needs it, and TensorBoard's events are written without it."""
  builder = datasets.get_builder('fashion_mnist', fashion_data_dir, download=False)
  for split in ('train', 'test'):  # Decoded and cached, as after a first run.
    datasets.load_split_arrays(builder, split)
  code = ('import sys\n'
          'from resnet_jax import train\n'
          'from tests.main_test import small_run_config\n'
          f'train.train_and_evaluate(small_run_config({fashion_data_dir!r}, 2), '
          f'{str(tmp_path / "run")!r})\n'
          "print('TensorFlow imported:', 'tensorflow' in sys.modules)\n")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                       text=True, timeout=300,
                       env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1'))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Final (step 2)' in out.stdout
  assert out.stdout.splitlines()[-1] == 'TensorFlow imported: False'
  assert glob.glob(str(tmp_path / 'run' / 'events.out.tfevents.*'))


def test_a_corrupt_prepared_split_is_named_with_the_fix(fashion_data_dir, tmp_path):
  import shutil
  data_dir = tmp_path / 'tfds'
  shutil.copytree(fashion_data_dir, data_dir)
  builder = datasets.get_builder('fashion_mnist', str(data_dir), download=False)
  version_dir = str(builder.data_dir)
  for cache in glob.glob(os.path.join(version_dir, '*.npz')):
    os.remove(cache)
  shard, = glob.glob(os.path.join(version_dir, '*-train.tfrecord*'))
  os.truncate(shard, os.path.getsize(shard) // 2)  # A copy cut short.
  with pytest.raises(datasets.DataMissingError,
                     match=f'^The train split of fashion_mnist_local in {version_dir} is '
                     rf'unreadable \(DataLossError: .*\): delete {version_dir} and run again'):
    datasets.load_split_arrays(builder, 'train')


_IMPORT_AT_ONCE = """
import os, sys, time
import tensorflow_datasets  # Loaded before the start line, so both processes race.
from resnet_jax import datasets
data_dir, me = sys.argv[1], sys.argv[2]
open(os.path.join(data_dir, '..', f'ready{me}'), 'w').close()
while not os.path.exists(os.path.join(data_dir, '..', 'go')):
  time.sleep(0.01)
datasets.ensure_fashion_mnist(sys.argv[3], data_dir, max_examples=int(sys.argv[4]))
"""


def test_processes_importing_fashion_mnist_at_once_share_one_import(tmp_path):
  """A sweep's workers (or a run's processes) starting on a new machine: one imports, the
  other waits for it instead of failing on TFDS's rename, and both read the same data."""
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  procs = [subprocess.Popen([sys.executable, '-c', _IMPORT_AT_ONCE, str(data_dir), str(i),
                             FASHION_MNIST_DIR, '64'], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  deadline = time.time() + 300
  while not all((tmp_path / f'ready{i}').exists() for i in range(2)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), [
        p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.05)
  (tmp_path / 'go').touch()
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
  assert sum('Importing Fashion-MNIST' in o for o in outs) == 1, outs
  builder = datasets.get_builder('fashion_mnist', str(data_dir), download=False)
  assert builder.info.splits['train'].num_examples == 64
  assert not list((data_dir / datasets.LOCAL_FASHION_MNIST).glob('incomplete*'))


def test_missing_data_says_how_to_get_it(tmp_path):
  with pytest.raises(datasets.DataMissingError, match='dataset-fashion-mnist'):
    datasets.get_builder('fashion_mnist', str(tmp_path), fashion_mnist_dir=str(tmp_path / 'no'),
                         download=False)
  with pytest.raises(datasets.DataMissingError, match='does not exist'):
    datasets.import_fashion_mnist(str(tmp_path), str(tmp_path / 'out'))
  # A directory named by hand that is not there: at once, not after a download's retries.
  with pytest.raises(datasets.DataMissingError, match=f'^data.fashion_mnist_dir {tmp_path}/no '
                     'does not exist: point it at the directory of the Fashion-MNIST IDX'):
    datasets.get_builder('fashion_mnist', str(tmp_path), fashion_mnist_dir=str(tmp_path / 'no'))


def test_a_data_dir_that_cannot_be_written_is_named_before_any_import_or_download(tmp_path):
  (tmp_path / 'a_file').write_text('not a directory')
  data_dir = str(tmp_path / 'a_file' / 'tfds')
  for name in ('fashion_mnist', 'cifar10'):  # The offline import, and a download.
    with pytest.raises(datasets.DataMissingError,
                       match=f'data dir {data_dir} cannot be written .Not a directory.: pass a '
                       'writable --config.data.data_dir'):
      datasets.get_builder(name, data_dir, fashion_mnist_dir=str(tmp_path))


def test_truncated_idx_file_is_refused(tmp_path):
  import gzip
  path = tmp_path / 'bad-idx1-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(bytes([0, 0, 8, 1, 0, 0, 0, 10, 1, 2, 3]))
  with pytest.raises(ValueError, match='truncated'):
    datasets.read_idx(str(path))


def test_unknown_dataset_is_refused():
  with pytest.raises(ValueError, match='Unknown dataset'):
    datasets.get_spec('svhn')


@pytest.mark.parametrize('name,shape,classes', [('cifar10', (32, 32, 3), 10),
                                                ('cifar100', (32, 32, 3), 100),
                                                ('mnist', (28, 28, 1), 10)])
def test_download_datasets_with_mock_data(tmp_path, name, shape, classes):
  with tfds.testing.mock_data(num_examples=64):
    builder = datasets.get_builder(name, str(tmp_path))
    splits = datasets.load_arrays(name, builder, validation_size=16)
  assert len(splits['train']) == 48 and len(splits['validation']) == 16
  assert splits['train'].images.shape[1:] == shape
  assert splits['train'].labels.max() < classes


def test_a_download_waits_for_another_process_downloading_into_the_same_dir(tmp_path, capsys):
  """A sweep's workers on a new machine: the second waits for the first's download."""
  # The holder lets go once the kernel lists a process blocked on its lock (or after 60 s).
  holder = subprocess.Popen([sys.executable, '-c', (
      'import fcntl, os, sys, time\n'
      'f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX)\n'
      'inode = os.fstat(f.fileno()).st_ino\n'
      'open(sys.argv[2], "w").close(); deadline = time.time() + 60\n'
      'while time.time() < deadline and not any(\n'
      '    "->" in l and f":{inode} " in l for l in open("/proc/locks")):\n'
      '  time.sleep(0.05)\n'
      'open(sys.argv[3], "w").close(); fcntl.flock(f, fcntl.LOCK_UN)\n'),
      str(tmp_path / 'cifar10.lock'), str(tmp_path / 'locked'), str(tmp_path / 'released')])
  while not (tmp_path / 'locked').exists():
    assert holder.poll() is None
    time.sleep(0.02)
  with tfds.testing.mock_data(num_examples=8):
    builder = datasets.get_builder('cifar10', str(tmp_path))
  assert (tmp_path / 'released').exists()  # It went on only once the other let go.
  assert holder.wait(timeout=60) == 0
  assert builder.name == 'cifar10'
  out = capsys.readouterr().out
  assert 'Waiting for another process that holds' in out
  assert 'cifar10 is not prepared in the TFDS data dir' in out


def test_train_batches_depend_only_on_seed_and_step():
  split = datasets.ArraySplit(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1),
                              np.arange(100, dtype=np.int32))
  a = input_pipeline.TrainBatches(split, 10, seed=3)
  b = input_pipeline.TrainBatches(split, 10, seed=3)
  c = input_pipeline.TrainBatches(split, 10, seed=4)
  assert a.steps_per_epoch == 10
  np.testing.assert_array_equal(a(17)['label'], b(17)['label'])  # Fresh object, same batch.
  assert not np.array_equal(a(17)['label'], c(17)['label'])
  epoch = np.concatenate([a(s)['label'] for s in range(10)])
  assert sorted(epoch) == list(range(100))  # Each example once per epoch.
  assert not np.array_equal(a(0)['label'], a(10)['label'])  # Reshuffled each epoch.
  # Two processes each take their half of the same global batch.
  halves = [input_pipeline.TrainBatches(split, 10, 3, i, 2)(17)['label'] for i in (0, 1)]
  assert sorted(np.concatenate(halves)) == sorted(a(17)['label'])


def test_eval_batches_pad_and_mask():
  split = datasets.ArraySplit(np.zeros((25, 2, 2, 1), np.uint8), np.arange(25, dtype=np.int32))
  batches = list(input_pipeline.eval_batches(split, 10))
  assert [b['image'].shape[0] for b in batches] == [10, 10, 10]
  assert sum(b['mask'].sum() for b in batches) == 25


def test_augmentation_is_seeded_and_shape_preserving():
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 12, 12, 3))
  a = input_pipeline.augment(x, jax.random.PRNGKey(1), 'crop_flip', 4)
  b = input_pipeline.augment(x, jax.random.PRNGKey(1), 'crop_flip', 4)
  c = input_pipeline.augment(x, jax.random.PRNGKey(2), 'crop_flip', 4)
  assert a.shape == x.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  flipped = input_pipeline.augment(x, jax.random.PRNGKey(1), 'flip')
  for i in range(8):  # Each image is itself or its mirror.
    assert (np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1]))
  # A crop is a translated window of the zero-padded image.
  crop = input_pipeline.augment(x, jax.random.PRNGKey(3), 'crop', 2)
  padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(8):
    assert any(np.array_equal(crop[i], padded[i, dy:dy + 12, dx:dx + 12])
               for dy in range(5) for dx in range(5))
  with pytest.raises(ValueError, match='Unknown augmentation'):
    input_pipeline.augment(x, jax.random.PRNGKey(0), 'mixup')


def test_streaming_imagenet_path_with_mock_data(tmp_path):
  from resnet_jax import streaming_input
  with tfds.testing.mock_data(num_examples=12):
    builder = datasets.get_builder('imagenet2012', str(tmp_path))
    it = streaming_input.train_iterator(builder, 'train', 4, 32, seed=0, start_step=0)
    batch = next(it)
    assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
    evals = list(streaming_input.eval_iterator(builder, 'validation', 5, 32))
  assert sum(b['mask'].sum() for b in evals) == 12
  assert all(b['image'].shape == (5, 32, 32, 3) for b in evals)


def test_a_hold_out_must_leave_training_examples():
  from resnet_jax import streaming_input
  spec = datasets.get_spec('imagenet2012')
  assert streaming_input.train_split_names(spec, 10000) == ('train[:-10000]', 'train[-10000:]')
  assert streaming_input.train_split_names(spec, 0) == ('train', None)  # Not 'train[:-0]'.
  datasets.check_validation_size('imagenet2012', 0, 5)
  datasets.check_validation_size('imagenet2012', 4, 5)
  for size in (5, 6, -1):
    with pytest.raises(datasets.ValidationSizeError,
                       match=rf'^data.validation_size {size} does not fit the 5 training '
                             r'examples of imagenet2012: hold out fewer \(0 for none\), or -1 '
                             r'for its default of 10000.$'):
      datasets.check_validation_size('imagenet2012', size, 5)


def test_channel_stats_match_float64_mean_and_std():
  images = np.random.RandomState(0).randint(0, 256, (50, 7, 5, 3)).astype(np.uint8)
  mean, std = input_pipeline.channel_stats(images)
  x = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(0), rtol=1e-6)
  assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)
