"""The base config every experiment file starts from, and its checks."""

import functools
import os

import ml_collections

from resnet_jax import datasets

# The shipped config files (configs/ beside the package, in a checkout or editable install).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs')


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
  c.data.on_device = False  # Keep the train split in device memory (in-memory data sets).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'cifar_resnet'
  c.model.depth = 20
  c.model.shortcut = 'A'  # 'identity' | 'A' | 'B' | 'C' | 'none' (plain).
  c.model.num_filters = 16
  c.model.preact = False
  c.model.zero_init_last_bn = False
  c.model.zero_init_head = False
  # Normalisation, branch scale and activation (resnet_jax/model_variants.py): the
  # paper's nets are 'batch', 'none', 'relu'; the others take normalisation out.
  c.model.norm = 'batch'  # 'batch' | 'none' (the convolutions carry biases).
  c.model.branch_scale = 'none'  # 'none' | 'skipinit' | 'fixup' (residual nets).
  c.model.activation = 'relu'  # 'relu' (He init) | 'tat' (plain nets without norm).
  c.model.scan_blocks = True
  c.model.remat = False
  c.model.conv_impl = 'onednn'  # With BatchNorm on oneDNN too; trainer.conv_impl: 'fast'
  # (and Flax's BatchNorm) where it cannot run.
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
  c.checkpoint_every_steps = 1000  # <= 0: only at the end (and when stopped by a signal).
  c.checkpoints_to_keep = 2
  c.init_from = ''  # Another run's workdir or checkpoint: start from its weights.
  # XLA:CPU's convolution kernels: 'eigen' (XLA's own; twice YNNPACK's speed on this
  # project's machine) or 'default' (jaxlib's choice). No effect on GPU/TPU.
  c.cpu_convolutions = 'eigen'
  return c


# Keys that change how a run is watched, where it reads from or which kernels compute
# it (to float rounding), not what it computes: a workdir accepts them changed.
RUN_CONTROL_KEYS = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
    'checkpoints_to_keep', 'eval_batch_size', 'init_from', 'cpu_convolutions',
    'data.data_dir', 'data.manual_dir', 'data.fashion_mnist_dir'})


def steps_for(config, steps_per_epoch: int) -> int:
  """The run's length in steps: `num_train_steps` if positive, else `num_epochs`."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(round(config.num_epochs * steps_per_epoch))


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_changes(old: dict, new: dict) -> list[str]:
  """'key: old -> new' for every key (outside RUN_CONTROL_KEYS) that differs. A key the
  old config lacks but `new` holds at base_config's default (a key added to base_config
  after that run was saved) is no change: the old run computed that default."""
  old, new = _flatten(old), _flatten(new)
  defaults = _flatten(base_config().to_dict())
  changes = []
  for key in sorted(set(old) | set(new)):
    if key in RUN_CONTROL_KEYS or (key not in old and key in defaults
                                   and new.get(key) == defaults[key]):
      continue
    if old.get(key, '<unset>') != new.get(key, '<unset>'):
      changes.append(f'{key}: {old.get(key, "<unset>")} -> {new.get(key, "<unset>")}')
  return changes


def describe_changes(changes: list[str], most: int = 3) -> str:
  """The first `most` of config_changes' lines, joined for a one-sentence error."""
  return '; '.join(changes[:most]) + ('; ...' if len(changes) > most else '')


def parse_arg(arg: str, flags=(), values=(), ints=()) -> dict:
  """Parses a config string like 'depth=56,plain' into {'depth': 56, 'plain': True}.

  `flags` are the bare words allowed, `values` the keys allowed with '=', of which
  those in `ints` must be integers.
  """
  out = {}
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if (eq and key in values) or (not eq and key in flags):
      out[key] = value if eq else True
    else:
      allowed = [*flags, *(f'{v}=...' for v in values)]
      raise ValueError(f'Unknown config argument {item!r}: use {", ".join(allowed)}.')
    if key in ints:
      try:
        out[key] = int(value)
      except ValueError:
        raise ValueError(f'The config argument {item!r} needs an integer, as in {key}=56.') \
            from None
  return out


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _fail(message: str):
  raise ConfigError(message)


def validate(config, device_count: int = 1, model: bool = True) -> None:
  """Refuses a bad config with one sentence naming the key and the fix, before any work.
  The model's own rules (depth, shortcut, shapes) are checked by building it abstractly,
  which imports JAX: `model=False` leaves that to the processes that train (the sweep's
  driver, which imports no JAX, has its workers check them before they train)."""
  # Imported here, and JAX-free: a config file should not need them.
  from resnet_jax import compile_options
  from resnet_jax import optim

  missing = [key for key in base_config() if key not in config]
  if missing:
    _fail(f'The config has no {missing[0]!r}: a run config starts from '
          f'config_lib.base_config() and overrides some of its keys (see configs/).')
  if config.data.name not in datasets.DATASETS:
    _fail(f'Unknown dataset {config.data.name!r} (data.name): use one of '
          f'{", ".join(datasets.DATASETS)}.')
  if not (isinstance(config.seed, int) and config.seed >= 0):
    _fail(f'seed must be a non-negative integer, got {config.seed}.')
  # Rules that live beside the code using the value raise a ValueError there; the model's
  # own (name, depth, shortcut, width, dtypes, conv_impl) are raised by building it
  # abstractly, at the end.
  try:
    compile_options.check(config.cpu_convolutions)
    optim.check(config.optimizer)
  except ValueError as e:
    _fail(str(e))
  _validate_data(config)
  _validate_run(config, device_count)
  if model:
    _validate_model(config)


def _validate_data(config) -> None:
  """The data keys: where the data live, their augmentation and normalisation, and
  images large enough for the model's downsampling."""
  from resnet_jax import streaming_input
  d, spec = config.data, datasets.get_spec(config.data.name)
  if d.on_device and not spec.in_memory:
    _fail(f'data.on_device applies to in-memory data sets, not the streamed {d.name}: '
          f'set it to False.')
  allowed = datasets.AUGMENTATIONS if spec.in_memory else \
      streaming_input.STREAM_AUGMENTATIONS
  if d.augment not in allowed:
    _fail(f'data.augment {d.augment!r} does not apply to {d.name}: use one of '
          f'{", ".join(allowed)}.')
  if d.normalize not in ('channel', 'unit'):
    _fail(f'Unknown data.normalize {d.normalize!r}: use "channel" or "unit".')
  if d.pad < 0:
    _fail(f'data.pad must be >= 0, got {d.pad}.')
  if d.validation_size < -1:
    _fail(f'data.validation_size must be a count of training examples to hold out (0 for '
          f'none) or -1 for the data set\'s default ({spec.validation_size}), got '
          f'{d.validation_size}.')
  m = config.model
  size = min(spec.image_shape[:2]) if spec.in_memory else d.image_size
  stride = {'cifar_resnet': 4, 'imagenet_resnet': 32}.get(m.name, 1)
  if size < stride:
    _fail(f'{size}x{size} inputs are too small for {m.name}, which downsamples by '
          f'{stride}: use images of at least {stride}x{stride}.')


def _validate_run(config, device_count: int) -> None:
  """Batch sizes on these devices, the run's length, logging, checkpoints, a warm start."""
  for key in ('batch_size', 'eval_batch_size'):
    if config[key] <= 0:
      _fail(f'{key} must be positive, got {config[key]}.')
    if config[key] % device_count:
      _fail(f'{key} {config[key]} is not divisible by the {device_count} devices: '
            f'use a multiple of {device_count}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    _fail('The run has no length: set num_train_steps or num_epochs to a positive value.')
  if config.log_every_steps <= 0:
    _fail(f'log_every_steps must be positive, got {config.log_every_steps}.')
  if config.checkpoints_to_keep <= 0:
    _fail(f'checkpoints_to_keep must be positive, got {config.checkpoints_to_keep}.')
  if config.init_from and '://' in config.init_from:
    _fail(f'init_from {config.init_from} is a URL, and runs read checkpoints only from '
          'directories: copy that run to a local path, or mount its bucket as a directory '
          '(Cloud Storage FUSE).')
  if config.init_from and not os.path.exists(config.init_from):
    _fail(f'init_from {config.init_from} does not exist: give another run\'s workdir or '
          f'checkpoint directory.')


def _validate_model(config) -> None:
  """The model's own rules, by building it abstractly on the data's shapes."""
  d, spec = config.data, datasets.get_spec(config.data.name)
  shape = spec.image_shape if spec.in_memory else (d.image_size, d.image_size, 3)
  items = tuple(sorted(config.model.to_dict().items()))
  try:
    hash(items)
  except TypeError:  # A model key holding a list, say: checked without the cache.
    error = _model_error.__wrapped__(items, spec.num_classes, tuple(shape))
  else:
    error = _model_error(items, spec.num_classes, tuple(shape))
  if error:
    _fail(error)


@functools.lru_cache(maxsize=64)
def _model_error(model_items: tuple, num_classes: int, shape: tuple) -> str | None:
  """Builds the model abstractly (no compilation) so that shape errors surface now; once
  per model config (a sweep's seeds share theirs: the paper grid's 50 cells, 10 models)."""
  import jax
  import jax.numpy as jnp
  from resnet_jax import models
  kwargs = dict(model_items)
  try:
    model = models.create_model(num_classes=num_classes, **kwargs)
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape),
                                      train=False))
  except TypeError as e:
    return f'The model config does not fit {kwargs.get("name")}: {e}.'
  except ValueError as e:
    return str(e)
  return None
