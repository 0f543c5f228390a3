"""The compiled programs of a run lower for GPUs and TPUs too, from this CPU machine.

No accelerator is lent to CI, so this is as close as a test gets to "runs unchanged
there": the same jitted, sharded train, eval and init steps that a run compiles
are lowered to StableHLO for CUDA, ROCm and TPU (lowering needs no device), for
each architecture and fast path. It catches a CPU-only operation or a platform
branch without a default before anyone pays for an accelerator.
"""

import jax
import numpy as np
import pytest

from resnet_jax import config_lib
from resnet_jax import optim
from resnet_jax import trainer as trainer_lib
from tests.conftest import override

PLATFORMS = ('cuda', 'rocm', 'tpu')

VARIANTS = {
    'resnetA-8-scan': {'model.scan_blocks': True},
    'paper-resnetA-110': {'model.depth': 110, 'model.num_filters': 16,
                          'model.scan_blocks': True},
    'paper-plain-110': {'model.depth': 110, 'model.num_filters': 16, 'model.shortcut': 'none',
                        'model.scan_blocks': True},
    'plain-8-unrolled': {'model.shortcut': 'none', 'model.scan_blocks': False},
    'resnetB-8-preact': {'model.shortcut': 'B', 'model.preact': True},
    'bfloat16': {'model.dtype': 'bfloat16'},
    'remat': {'model.remat': True, 'model.scan_blocks': True},
    'imagenet-18': {'model.name': 'imagenet_resnet', 'model.depth': 18,
                    'model.shortcut': 'B', 'model.num_filters': 4},
}


def lower_everywhere(jitted, *args):
  traced = jitted.trace(*args)
  return {p: traced.lower(lowering_platforms=(p,)).as_text() for p in PLATFORMS}


@pytest.mark.parametrize('name', VARIANTS)
def test_train_eval_and_init_lower_for_accelerators(name):
  config = override(config_lib.base_config(), **{
      'model.depth': 8, 'model.num_filters': 4, 'data.augment': 'crop_flip',
      **VARIANTS[name]})
  shape, classes = (16, 16, 3), 10
  model = trainer_lib.build_model(config, classes)
  tx, schedule = optim.create_optimizer(config.optimizer, 100)
  trainer = trainer_lib.Trainer(config, model, tx, schedule, shape, np.zeros(3, np.float32),
                          np.ones(3, np.float32), classes)
  state = trainer.init_state(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = trainer.to_device({'image': rng.integers(0, 256, (8,) + shape, dtype=np.uint8),
                             'label': rng.integers(0, classes, (8,), dtype=np.int32)})
  lowered = lower_everywhere(trainer.train_step, state, batch, jax.random.PRNGKey(1))
  eval_batch = dict(batch, mask=trainer.to_device({'m': np.ones(8, np.float32)})['m'])
  lowered_eval = lower_everywhere(trainer.eval_step, state, eval_batch)
  lower_everywhere(trainer._init, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  for platform in PLATFORMS:
    assert 'stablehlo.convolution' in lowered[platform]
    assert 'stablehlo.convolution' in lowered_eval[platform]
    if name == 'bfloat16':  # The convolutions run in bfloat16 there too.
      assert 'xbf16>' in lowered[platform]


def test_vmapped_seeds_and_data_on_device_lower_for_accelerators():
  """The ablation's default on accelerators (seeds vmapped), with the split on device."""
  config = override(config_lib.base_config(), **{
      'model.depth': 8, 'model.num_filters': 4, 'model.scan_blocks': True})
  shape, classes = (16, 16, 3), 10
  model = trainer_lib.build_model(config, classes)
  tx, schedule = optim.create_optimizer(config.optimizer, 100)
  rng = np.random.default_rng(0)
  resident = (rng.integers(0, 256, (32,) + shape, dtype=np.uint8),
              rng.integers(0, classes, (32,), dtype=np.int32))
  trainer = trainer_lib.Trainer(config, model, tx, schedule, shape, np.zeros(3, np.float32),
                          np.ones(3, np.float32), classes, resident=resident, num_seeds=2)
  state = trainer.stack([trainer.init_state(jax.random.PRNGKey(s)) for s in (0, 1)])
  batch = trainer.to_device({'index': np.arange(16, dtype=np.int32).reshape(2, 8)},
                            train=True)
  rngs = trainer.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
  lowered = lower_everywhere(trainer.train_step, state, batch, rngs, *trainer.resident)
  for platform in PLATFORMS:
    assert 'stablehlo.convolution' in lowered[platform]
