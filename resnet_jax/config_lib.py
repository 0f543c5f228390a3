"""The base config every experiment file starts from, and its checks."""

import ml_collections

from resnet_jax import datasets


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with defaults; config files override a few of them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'fashion_mnist'
  c.data.data_dir = ''  # '' means TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data.manual_dir = ''
  c.data.fashion_mnist_dir = datasets.DEFAULT_FASHION_MNIST_DIR
  c.data.validation_size = -1  # -1: the data set's default hold-out (5,000 for CIFAR).
  c.data.augment = 'crop_flip'  # 'crop_flip' | 'crop' | 'flip' | 'none'.
  c.data.pad = 4
  c.data.normalize = 'channel'  # 'channel': per-channel mean/std of train; 'unit': x / 255.
  c.data.image_size = 224  # Streamed data sets (ImageNet) only.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cifar_resnet'
  c.model.depth = 20
  c.model.shortcut = 'A'  # 'identity' | 'A' | 'B' | 'C' | 'none' (plain).
  c.model.num_filters = 16
  c.model.preact = False
  c.model.zero_init_last_bn = False
  c.model.scan_blocks = True
  c.model.remat = False
  c.model.conv_impl = 'fast'
  c.model.dtype = 'float32'
  c.model.param_dtype = 'float32'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' | 'adam' | 'adamw'.
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_on = 'all'  # 'all' (as the paper) | 'kernels'.
  c.optimizer.schedule = 'cosine'  # 'piecewise' | 'cosine' | 'constant'.
  c.optimizer.boundaries = (32000, 48000)  # Steps; for 'piecewise'.
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_kind = 'linear'  # 'linear' from 0, or 'constant' at warmup_learning_rate.
  c.optimizer.warmup_learning_rate = 0.01

  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_train_steps = -1  # > 0 wins over num_epochs.
  c.num_epochs = 10.0
  c.log_every_steps = 100
  c.eval_every_steps = 1000  # <= 0: only at the end.
  c.checkpoint_every_steps = 1000
  c.checkpoints_to_keep = 2
  return c


def parse_arg(arg: str, flags=(), values=()) -> dict:
  """Parses a config string like 'depth=56,plain' into {'depth': '56', 'plain': True}.

  `flags` are the bare words allowed, `values` the keys allowed with '='.
  """
  out = {}
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if (eq and key in values) or (not eq and key in flags):
      out[key] = value if eq else True
    else:
      allowed = [*flags, *(f'{v}=...' for v in values)]
      raise ValueError(f'Unknown config argument {item!r}: use {", ".join(allowed)}.')
  return out
