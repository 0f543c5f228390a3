"""A run's data: the training batch of any step and the evaluation batches of each split,
from an in-memory data set (optionally held on the devices) or a streamed one."""

import jax
import numpy as np

from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import input_pipeline
from resnet_jax import streaming_input

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


_LOADED = {}  # The in-memory splits this process read last, by where they came from.


class Data:
  """A run's data: the batch of any training step, and eval batches of each split."""

  def __init__(self, config):
    cfg = config.data
    self.spec = datasets.get_spec(cfg.name)
    self.builder = datasets.get_builder(cfg.name, cfg.data_dir or None,
                                        cfg.manual_dir or None, cfg.fashion_mnist_dir)
    val = self.spec.validation_size if cfg.validation_size < 0 else cfg.validation_size
    self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
    self.seed, self.image_size = config.seed, cfg.image_size
    self.on_device = bool(cfg.on_device) and self.spec.in_memory
    self.pi, self.pc = jax.process_index(), jax.process_count()
    if self.spec.in_memory:
      key = (cfg.name, cfg.data_dir, cfg.manual_dir, cfg.fashion_mnist_dir, val)
      if key not in _LOADED:  # A sweep's worker trains cell after cell on the same data.
        _LOADED.clear()
        _LOADED[key] = datasets.load_arrays(cfg.name, self.builder, val)
      self.splits = _LOADED[key]
      self.sizes = {k: len(v) for k, v in self.splits.items()}
      self._check_batch_size(config.batch_size, val)
      self._batches = {}
      self.steps_per_epoch = self.batches(config.seed).steps_per_epoch
      self.image_shape = self.splits['train'].images.shape[1:]
      self.mean, self.std = input_pipeline.channel_stats(self.splits['train'].images)
    else:
      self.split_names = dict(zip(('train', 'validation'),
                                  streaming_input.train_split_names(self.spec, val)),
                              test=self.spec.test_split)
      n_train = self.builder.info.splits['train'].num_examples
      datasets.check_validation_size(cfg.name, val, n_train)
      self.sizes = {'train': n_train - val, 'validation': val,
                    'test': self.builder.info.splits[self.spec.test_split].num_examples}
      self._check_batch_size(config.batch_size, val)
      self.steps_per_epoch = self.sizes['train'] // config.batch_size
      self.image_shape = (cfg.image_size, cfg.image_size, self.spec.image_shape[-1])
      self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
      self._stream, self._next_step = None, None
    if cfg.normalize == 'unit':  # config_lib.validate has refused any other value.
      self.mean = np.zeros_like(self.mean)
      self.std = np.ones_like(self.std)

  def _check_batch_size(self, batch_size: int, held_out: int):
    if batch_size > self.sizes['train']:
      raise config_lib.ConfigError(
          f'batch_size {batch_size} is larger than the {self.sizes["train"]} training '
          f'examples of {self.spec.tfds_name} ({held_out} held out for validation): lower '
          f'batch_size (or data.validation_size).')

  def resident(self):
    """The arrays to keep in device memory, or None when batches come from the host."""
    if not self.on_device:
      return None
    return self.splits['train'].images, self.splits['train'].labels

  def batches(self, seed: int) -> input_pipeline.TrainBatches:
    if seed not in self._batches:
      self._batches[seed] = input_pipeline.TrainBatches(
          self.splits['train'], self.batch_size, seed, self.pi, self.pc)
    return self._batches[seed]

  def train_batch(self, step: int, seed: int | None = None):
    """This process's part of training batch `step` (of run `seed`, default the config's)."""
    seed = self.seed if seed is None else seed
    if self.on_device:
      return {'index': self.batches(seed).indices(step)}
    if self.spec.in_memory:
      return self.batches(seed)(step)
    if self._stream is None or step != self._next_step:
      self._stream = streaming_input.train_iterator(
          self.builder, self.split_names['train'], self.batch_size // self.pc,
          self.image_size, self.seed, step, self.pi, self.pc)
    self._next_step = step + 1
    return next(self._stream)

  def held_out(self, n: int):
    """The first `n` images (uint8, as stored) and labels of the validation split, or of
    the test split where none is held out: the layer analysis's probe images."""
    return self.first('validation' if self.sizes['validation'] else 'test', n)

  def first(self, split: str, n: int):
    """The first `n` images (uint8, as stored, never augmented) and labels of `split`
    (all of them where it has fewer)."""
    if self.spec.in_memory:
      return self.splits[split].images[:n], self.splits[split].labels[:n]
    images, labels = [], []
    for batch in self.eval_batches(split):
      real = batch['mask'] > 0
      images.append(batch['image'][real])
      labels.append(batch['label'][real])
      if sum(map(len, labels)) >= n:
        break
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]

  def eval_batches(self, split: str):
    if self.spec.in_memory:
      return input_pipeline.eval_batches(self.splits[split], self.eval_batch_size,
                                         self.pi, self.pc)
    return streaming_input.eval_iterator(self.builder, self.split_names[split],
                                         self.eval_batch_size // self.pc,
                                         self.image_size, self.pi, self.pc)
