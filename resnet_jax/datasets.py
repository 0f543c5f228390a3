"""Data sets through tensorflow-datasets, with an offline Fashion-MNIST import.

Small data sets (MNIST, Fashion-MNIST, CIFAR) are read once into host memory as
uint8 arrays; the validation set is held out of the end of the training split
(CIFAR 45k/5k as in the paper, Fashion-MNIST 55k/5k); the test split is only for
final numbers. Fashion-MNIST needs no network: when TFDS has not prepared it,
the IDX files of Debian's `dataset-fashion-mnist` are imported into the TFDS
data dir as a real TFDS dataset, once.
"""

import contextlib
import dataclasses
import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import struct

from absl import logging
import numpy as np

DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
LOCAL_FASHION_MNIST = 'fashion_mnist_local'
LOCAL_VERSION = '1.0.0'
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10000),
}


# The in-memory data sets' augmentations (input_pipeline applies them on the device).
AUGMENTATIONS = ('none', 'crop_flip', 'crop', 'flip')


class DataMissingError(RuntimeError):
  """The data set is neither prepared nor obtainable; the message says how to get it."""


class ValidationSizeError(ValueError):
  """A hold-out that leaves no training examples."""


def check_validation_size(name: str, validation_size: int, num_train: int) -> None:
  """Refuses a hold-out of `validation_size` of `num_train` training examples that leaves
  none to train on."""
  if not 0 <= validation_size < num_train:
    raise ValidationSizeError(
        f'data.validation_size {validation_size} does not fit the {num_train} training '
        f'examples of {name}: hold out fewer (0 for none), or -1 for its default of '
        f'{get_spec(name).validation_size}.')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  tfds_name: str
  image_shape: tuple
  num_classes: int
  validation_size: int  # Held out of the end of the training split.
  train_examples: int  # The training split's size, before any is held out.
  test_split: str = 'test'
  in_memory: bool = True  # False: streamed through tf.data (ImageNet).
  how_to_get: str = ''
  class_names: tuple = ()  # Empty: the TFDS builder's label names (the local import has none).


FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

DATASETS = {
    'fashion_mnist': DatasetSpec('fashion_mnist', (28, 28, 1), 10, 5000, 60_000,
                                 how_to_get='install the Debian package dataset-fashion-mnist '
                                 '(apt-get install dataset-fashion-mnist) or run once with network',
                                 class_names=FASHION_MNIST_CLASSES),
    'mnist': DatasetSpec('mnist', (28, 28, 1), 10, 6000, 60_000,
                         how_to_get='run once with network access so TFDS can download it'),
    'cifar10': DatasetSpec('cifar10', (32, 32, 3), 10, 5000, 50_000,
                           how_to_get='run once with network access so TFDS can download it'),
    'cifar100': DatasetSpec('cifar100', (32, 32, 3), 100, 5000, 50_000,
                            how_to_get='run once with network access so TFDS can download it'),
    'imagenet2012': DatasetSpec('imagenet2012', (224, 224, 3), 1000, 10000, 1_281_167,
                                test_split='validation', in_memory=False,
                                how_to_get='download ILSVRC2012_img_train.tar and '
                                'ILSVRC2012_img_val.tar into the TFDS manual dir '
                                '(--config.data.manual_dir) and run once'),
}


def import_tensorflow():
  """TensorFlow, for tf.data only, kept off the accelerators (a GPU build would take their
  memory). Imported only to decode a data set the first time or to stream one: its
  import alone takes seconds."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow has started: the first call's setting holds.
    pass
  return tf


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}: use one of {", ".join(DATASETS)}.')
  return DATASETS[name]


def read_idx(path: str) -> np.ndarray:
  """Decodes one (gzipped) IDX file into a uint8 array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f'{path} is not an IDX file of unsigned bytes.')
  shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: expected {int(np.prod(shape))} values, '
                     f'found {array.size}.')
  return array.reshape(shape)


def array_checksum(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).tobytes())
  return h.hexdigest()


def local_fashion_mnist_dir(data_dir: str) -> str:
  return os.path.join(data_dir, LOCAL_FASHION_MNIST, LOCAL_VERSION)


def import_fashion_mnist(source_dir: str, data_dir: str, max_examples: int | None = None):
  """Imports the Fashion-MNIST IDX files into `data_dir` as a TFDS dataset; returns its builder.

  Checks the counts (60,000 / 10,000) and records a sha256 of the decoded arrays
  in `checksums.json` beside the dataset. `max_examples` keeps only the first
  examples of each split (for quick tests).
  """
  tf = import_tensorflow()
  import tensorflow_datasets as tfds

  splits, checksums = {}, {}
  for split, (images_file, labels_file, count) in FASHION_MNIST_FILES.items():
    paths = [os.path.join(source_dir, f) for f in (images_file, labels_file)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise DataMissingError(
          f'Fashion-MNIST is not prepared and {missing[0]} does not exist: '
          f'{DATASETS["fashion_mnist"].how_to_get}, or point '
          f'--config.data.fashion_mnist_dir at the IDX files.')
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != count or len(labels) != count:
      raise ValueError(f'Fashion-MNIST {split} should hold {count} examples, but '
                       f'{paths[0]} has {len(images)} images and {paths[1]} '
                       f'{len(labels)} labels: reinstall dataset-fashion-mnist.')
    checksums[split] = {'examples': count, 'sha256': array_checksum(images, labels)}
    if max_examples:
      images, labels = images[:max_examples], labels[:max_examples]
    splits[split] = tf.data.Dataset.from_tensor_slices(
        {'image': images[..., None], 'label': labels.astype(np.int64)})
  logging.info('Importing Fashion-MNIST from %s into %s (once).', source_dir, data_dir)
  print(f'Importing Fashion-MNIST from {source_dir} into the TFDS data dir {data_dir} '
        '(once, about a minute)...', flush=True)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(28, 28, 1)),
      'label': tfds.features.ClassLabel(num_classes=10),
  })
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=LOCAL_FASHION_MNIST, version=LOCAL_VERSION, features=features,
      split_datasets=splits, data_dir=data_dir, disable_shuffling=True,
      description=f'Fashion-MNIST imported from the IDX files in {source_dir}.')
  with open(os.path.join(local_fashion_mnist_dir(data_dir), 'checksums.json'), 'w') as f:
    json.dump({'source_dir': source_dir, 'max_examples': max_examples,
               'splits': checksums}, f, indent=2)
  return builder


def _imported(data_dir: str) -> bool:
  """Whether `data_dir` holds a complete Fashion-MNIST import (TFDS renames it into place)."""
  return os.path.exists(os.path.join(local_fashion_mnist_dir(data_dir), 'dataset_info.json'))


@contextlib.contextmanager
def _exclusive(path: str):
  """Holds an exclusive lock on the file `path` (made if missing) until the block ends."""
  with open(path, 'a') as f:  # Closing the file releases the lock.
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f'Waiting for another process that holds {path}...', flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    yield


def ensure_fashion_mnist(source_dir: str, data_dir: str, max_examples: int | None = None):
  """Imports Fashion-MNIST into `data_dir` unless it is there, once however many processes
  ask at a time (a sweep's workers, a run's processes): the others wait, then read it."""
  with _one_at_a_time(data_dir, 'Fashion-MNIST', LOCAL_FASHION_MNIST):
    if not _imported(data_dir):
      import_fashion_mnist(source_dir, data_dir, max_examples)


@contextlib.contextmanager
def _one_at_a_time(data_dir: str, name: str, lock: str):
  """Held while a process prepares `name` in the TFDS data dir `data_dir`: others wait,
  then find it prepared. The dir is made first; a bucket has no file locks."""
  if '://' in data_dir:
    yield
    return
  _make_data_dir(data_dir, name)
  with _exclusive(os.path.join(data_dir, f'{lock}.lock')):
    yield


def _make_data_dir(data_dir: str, name: str) -> None:
  """Creates the TFDS data dir, or says in one sentence why `name` cannot be put there."""
  try:
    os.makedirs(data_dir, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
      raise PermissionError(13, 'Permission denied')
  except OSError as e:
    raise DataMissingError(
        f'{name} is not prepared and the TFDS data dir {data_dir} cannot be written '
        f'({e.strerror}): pass a writable --config.data.data_dir (or set TFDS_DATA_DIR).') \
        from None


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def get_builder(name: str, data_dir: str | None = None, manual_dir: str | None = None,
                fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR, download: bool = True):
  """A prepared TFDS builder for `name`: found, imported offline, or downloaded."""
  import tensorflow_datasets as tfds

  spec = get_spec(name)
  data_dir = data_dir or default_data_dir()
  builder = None
  # TFDS warns of a dataset folder that is not there: look only where one may be.
  if '://' in data_dir or os.path.isdir(os.path.join(data_dir, spec.tfds_name)):
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if builder.is_prepared():
      return builder
  if name == 'fashion_mnist':
    local = local_fashion_mnist_dir(data_dir)
    if _imported(data_dir):
      try:
        return tfds.builder_from_directory(local)
      except Exception as e:  # pylint: disable=broad-except
        raise DataMissingError(
            f'The imported Fashion-MNIST in {local} is unreadable ({type(e).__name__}): '
            f'delete that directory and run again to import it afresh.') from e
    if os.path.isdir(fashion_mnist_dir):
      ensure_fashion_mnist(fashion_mnist_dir, data_dir)
      return tfds.builder_from_directory(local)
    if os.path.normpath(fashion_mnist_dir) != DEFAULT_FASHION_MNIST_DIR:
      # A directory the user named, mistyped: say so now, not after a download's retries.
      raise DataMissingError(
          f'data.fashion_mnist_dir {fashion_mnist_dir} does not exist: point it at the '
          f'directory of the Fashion-MNIST IDX files, or install the Debian package '
          f'dataset-fashion-mnist and leave it at its default ({DEFAULT_FASHION_MNIST_DIR}).')
  if not download:
    raise DataMissingError(f'{name} is not prepared in {data_dir}: {spec.how_to_get}.')
  # One download however many processes ask at a time (a sweep's workers).
  with _one_at_a_time(data_dir, name, spec.tfds_name):
    if builder is None and os.path.isdir(os.path.join(data_dir, spec.tfds_name)):
      builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if builder is not None and builder.is_prepared():
      return builder  # Another process prepared it while this one waited.
    print(f'{name} is not prepared in the TFDS data dir {data_dir}: TFDS downloads and '
          'prepares it, once (offline, the download fails after its retries, about 3 '
          'minutes).', flush=True)
    import_tensorflow()  # Before TFDS starts it to prepare the data.
    try:
      builder = builder or tfds.builder(spec.tfds_name, data_dir=data_dir)
      config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # pylint: disable=broad-except
      raise DataMissingError(
          f'{name} is not prepared in the TFDS data dir {data_dir} and could not be '
          f'downloaded ({type(e).__name__}): {spec.how_to_get}.') from e
  return builder


@dataclasses.dataclass
class ArraySplit:
  """A split held in host memory: uint8 images (N, H, W, C) and int32 labels (N,)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


def _split_signature(builder, split: str) -> str:
  """Names, sizes and times of the files a prepared split is read from."""
  files = sorted(glob.glob(os.path.join(builder.data_dir, f'*-{split}.*')))
  return ';'.join(f'{os.path.basename(f)}:{os.path.getsize(f)}:{os.path.getmtime(f)}'
                  for f in files)


def load_split_arrays(builder, split: str) -> ArraySplit:
  """A split decoded into memory; cached as .npz beside a local prepared dataset, so
  later runs skip decoding (the cache is ignored if its files changed)."""
  import tensorflow_datasets as tfds
  data_dir = str(builder.data_dir)
  local = os.path.exists(os.path.join(data_dir, 'dataset_info.json'))
  cache = os.path.join(data_dir, f'{split}.arrays.npz')
  signature = _split_signature(builder, split) if local else ''
  if local and signature and os.path.exists(cache):
    try:
      with np.load(cache) as f:
        if str(f['signature']) == signature:
          return ArraySplit(f['images'], f['labels'])
    except (OSError, ValueError, KeyError):
      pass  # Unreadable: decode again and rewrite it.
  tf = import_tensorflow()
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False).batch(10000)
    parts = list(tfds.as_numpy(ds))
  except tf.errors.OpError as e:  # A truncated or corrupt file (a full disk, a copy cut short).
    reason = re.sub(r'\{\{.*?\}\}\s*|\s*\[Op:.*', '', str(e.message)).strip()[:200]
    raise DataMissingError(
        f'The {split} split of {builder.name} in {data_dir} is unreadable '
        f'({type(e).__name__}: {reason}): delete {data_dir} and run again to prepare it '
        'afresh.') from None
  if not parts:
    raise DataMissingError(f'The {split} split of {builder.name} is empty.')
  out = ArraySplit(np.concatenate([p['image'] for p in parts]).astype(np.uint8),
                   np.concatenate([p['label'] for p in parts]).astype(np.int32))
  if local and signature:
    try:
      tmp = f'{cache}.{os.getpid()}.tmp.npz'
      np.savez(tmp, images=out.images, labels=out.labels, signature=signature)
      os.replace(tmp, cache)
    except OSError:
      pass  # A read-only data dir: decode every time.
  return out


def load_arrays(name: str, builder, validation_size: int | None = None):
  """Returns {'train', 'validation', 'test'} ArraySplits; validation from the end of train."""
  spec = get_spec(name)
  validation_size = spec.validation_size if validation_size is None else validation_size
  full = load_split_arrays(builder, 'train')
  check_validation_size(name, validation_size, len(full))
  cut = len(full) - validation_size
  return {
      'train': ArraySplit(full.images[:cut], full.labels[:cut]),
      'validation': ArraySplit(full.images[cut:], full.labels[cut:]),
      'test': load_split_arrays(builder, spec.test_split),
  }
