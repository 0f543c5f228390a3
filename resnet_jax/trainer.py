"""The trainer: the compiled steps of one run (or of several seeds vmapped), their mesh
over every device of every process, and the shardings of states and batches."""

import functools

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from resnet_jax import compile_options
from resnet_jax import models
from resnet_jax import steps
from resnet_jax.native import extension


def make_mesh() -> Mesh:
  """A one-axis mesh of every device of every process: the batch is split on `data`."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def conv_impl(wanted: str) -> str:
  """The conv_impl a run takes for the config's `wanted` one on this process's devices.

  'onednn' runs on one CPU device with the native extension built, and is 'fast'
  elsewhere (a GPU or TPU, several devices, no extension). 'fast' is XLA's own where
  the batch is split over several devices: split across them, fast_conv's batch chunks
  ran slower on 4 CPU devices (docs/gpu_tpu.md) and could deadlock XLA:CPU's
  collectives (and the extension's calls, which XLA's partitioner cannot split, would
  gather the batch)."""
  if wanted in ('fast', 'onednn') and jax.device_count() > 1:
    return 'xla'
  if wanted == 'onednn' and jax.default_backend() != 'cpu':
    return 'fast'
  if wanted == 'onednn' and not extension.available():
    _say_onednn_is_missing()
    return 'fast'
  return wanted


@functools.cache
def _say_onednn_is_missing():
  logging.warning('oneDNN\'s convolutions are not available: %s. This process takes '
                  'fast_conv\'s instead (slower on CPUs).', extension.load_error())


def build_model(config, num_classes: int):
  """The config's model, with the conv_impl these devices can run (`conv_impl`)."""
  kwargs = config.model.to_dict()
  if 'conv_impl' in kwargs:
    kwargs['conv_impl'] = conv_impl(kwargs['conv_impl'])
  return models.create_model(num_classes=num_classes, **kwargs)


def to_host(tree):
  """Replicated device values as numpy, on every process (each holds a full copy)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), tree)


def stack_seeds(trees: list, xp=np):
  """Per-seed trees as one with a leading seed axis (`xp`: numpy on the host, jax.numpy
  in a compiled program); `pick_seed` takes seed `i`'s part back out."""
  return jax.tree_util.tree_map(lambda *x: xp.stack(x), *trees)


def pick_seed(tree, i: int):
  return jax.tree_util.tree_map(lambda x: x[i], tree)


class Trainer:
  """Holds the compiled steps and shardings of one run, or of `num_seeds` runs at once.

  With `resident` (a split's images and labels) the split is copied to every device
  once and the train step takes `{'index': ...}` batches, gathering on the device.
  With `num_seeds` > 1 the train step is vmapped: states, batches and rngs carry a
  leading seed axis (`stack` and `pick` convert).
  """

  def __init__(self, config, model, tx, schedule, image_shape, mean, std, num_classes,
               resident=None, num_seeds: int = 1):
    self.mesh = make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.model, self.image_shape = model, image_shape
    self.tx, self.num_seeds = tx, num_seeds
    kwargs = dict(schedule=schedule, data_cfg=config.data, mean=mean, std=std,
                  num_classes=num_classes)
    self.resident = ()
    if resident is not None:
      self.resident = tuple(
          jax.make_array_from_callback(a.shape, self.replicated, lambda i, a=a: a[i])
          for a in resident)
    step = functools.partial(steps.gather_train_step if self.resident else steps.train_step,
                             **kwargs)
    self.batch_sharding = self.data_sharding
    if num_seeds > 1:
      step = jax.vmap(step, in_axes=(0, 0, 0) + (None,) * len(self.resident))
      self.batch_sharding = NamedSharding(self.mesh, P(None, 'data'))
    self.compiler_options = options = compile_options.for_config(config)
    self.train_step = jax.jit(
        step, compiler_options=options,
        in_shardings=(self.replicated, self.batch_sharding, self.replicated)
        + (self.replicated,) * len(self.resident),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(steps.eval_step, mean=mean, std=std, num_classes=num_classes),
        compiler_options=options,
        in_shardings=(self.replicated, self.data_sharding), out_shardings=self.replicated)
    # Initialisation runs once a run: compiled with few optimisations, it compiles fast.
    self._init = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx,
                                           image_shape=image_shape),
                         compiler_options=compile_options.run_once(options),
                         out_shardings=self.replicated)
    self._stack = jax.jit(lambda *trees: stack_seeds(trees, jnp),
                          out_shardings=self.replicated)
    self._pick = jax.jit(pick_seed, out_shardings=self.replicated)

  def stack(self, trees: list):
    """Per-seed trees (states, rngs) as one tree with a leading seed axis."""
    return trees[0] if self.num_seeds == 1 else self._stack(*trees)

  def pick(self, tree, i: int):
    """Seed `i`'s part of a stacked tree."""
    return tree if self.num_seeds == 1 else self._pick(tree, i)

  def init_state(self, rng) -> steps.TrainState:
    return self._init(rng)

  def to_device(self, local_batch, train: bool = False):
    """This process's part of a batch as a global array (a train batch of several
    seeds has a leading seed axis)."""
    sharding = self.batch_sharding if train else self.data_sharding
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

  def evaluate(self, state, batches) -> dict:
    totals = None
    for batch in batches:
      sums = self.eval_step(state, self.to_device(batch))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = to_host(totals)
    count = totals.pop('count')
    return {k: float(v / count) for k, v in totals.items()}
