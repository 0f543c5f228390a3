"""Training: the step learns, schedules, checkpoints round-trip, 4 devices equal 1."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpoints
from resnet_jax import config_lib
from resnet_jax import optim
from resnet_jax import train
from resnet_jax import trainer as trainer_lib
from tests.conftest import REPO, override


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.model.depth = 8
  c.model.num_filters = 4
  c.batch_size = 16
  c.data.augment = 'none'
  return override(c, **overrides)


def make_trainer(config, num_classes=10, shape=(8, 8, 3), total_steps=100):
  model = trainer_lib.build_model(config, num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, total_steps)
  return trainer_lib.Trainer(config, model, tx, schedule, shape,
                       np.zeros(shape[-1], np.float32), np.ones(shape[-1], np.float32),
                       num_classes)


def fixed_batch(n=16, shape=(8, 8, 3), classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
          'label': rng.integers(0, classes, (n,), dtype=np.int32)}


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
  config = tiny_config(**{'optimizer.learning_rate': 0.05, 'optimizer.schedule': 'constant'})
  trainer = make_trainer(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  batch = trainer.to_device(fixed_batch())
  losses = []
  for _ in range(8):
    state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0]
  assert int(state.step) == 8
  assert set(metrics) == {'loss', 'accuracy', 'learning_rate', 'grad_norm', 'param_norm'}
  # BatchNorm statistics are carried in the state and move with training.
  assert not np.allclose(state.batch_stats['stem_bn']['mean'], 0)


def test_top5_reported_for_more_than_ten_classes():
  config = tiny_config()
  trainer = make_trainer(config, num_classes=100)
  state = trainer.init_state(jax.random.PRNGKey(0))
  _, metrics = trainer.train_step(state, trainer.to_device(fixed_batch(classes=100)),
                                  jax.random.PRNGKey(1))
  assert 'top5_accuracy' in metrics
  assert float(metrics['top5_accuracy']) >= float(metrics['accuracy'])


def test_learning_rate_schedules():
  c = config_lib.base_config().optimizer
  c.schedule, c.boundaries, c.learning_rate = 'piecewise', (32000, 48000), 0.1
  s = optim.learning_rate_schedule(c, 64000)
  assert np.isclose(s(0), 0.1) and np.isclose(s(32000), 0.01) and np.isclose(s(48000), 0.001)
  c.warmup_steps, c.warmup_kind, c.warmup_learning_rate = 400, 'constant', 0.01
  s = optim.learning_rate_schedule(c, 64000)  # ResNet-110's warm-up.
  assert np.isclose(s(0), 0.01) and np.isclose(s(399), 0.01) and np.isclose(s(400), 0.1)
  assert np.isclose(s(31999), 0.1) and np.isclose(s(32000), 0.01)
  c.warmup_steps, c.schedule = 0, 'cosine'
  s = optim.learning_rate_schedule(c, 1000)
  assert np.isclose(s(0), 0.1) and np.isclose(s(1000), 0.0) and np.isclose(s(500), 0.05)
  c.schedule = 'exponential'
  with pytest.raises(ValueError, match='optimizer.schedule'):
    optim.create_optimizer(c, 10)


def test_the_eta_goes_at_the_sessions_average_speed():
  # Resumed at step 100, at step 400 after 600 s: 2 s a step for the 600 left, however
  # fast or slow the last interval between two progress lines was.
  assert train.seconds_left(400, 1000, 100, 600.0) == 1200.0
  assert train.seconds_left(1000, 1000, 0, 50.0) == 0.0


def test_weight_decay_on_kernels_or_all():
  params = {'conv': {'kernel': jnp.ones(3)}, 'bn': {'scale': jnp.ones(3), 'bias': jnp.ones(3)}}
  assert optim.decay_mask(params, 'kernels') == {
      'conv': {'kernel': True}, 'bn': {'scale': False, 'bias': False}}
  assert all(jax.tree_util.tree_leaves(optim.decay_mask(params, 'all')))
  c = config_lib.base_config().optimizer
  c.learning_rate, c.momentum, c.weight_decay, c.schedule = 1.0, 0.0, 0.1, 'constant'
  for on, expected_bias in [('kernels', 1.0), ('all', 0.9)]:
    c.weight_decay_on = on
    tx, _ = optim.create_optimizer(c, 10)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    np.testing.assert_allclose(new['conv']['kernel'], 0.9)
    np.testing.assert_allclose(new['bn']['bias'], expected_bias)
  c.name = 'lamb'
  with pytest.raises(ValueError, match='Unknown optimizer'):
    optim.create_optimizer(c, 10)


def test_checkpoint_round_trip_gives_identical_state(tmp_path):
  config = tiny_config()
  trainer = make_trainer(config)
  state = trainer.init_state(jax.random.PRNGKey(0))
  for i in range(2):
    state, _ = trainer.train_step(state, trainer.to_device(fixed_batch(seed=i)),
                                  jax.random.PRNGKey(1))
  mngr = train.checkpoint_manager(str(tmp_path), config)
  pending = [{'loss': np.float32(2.3456789)}]
  checkpoints.save(mngr, 2, state, pending)
  mngr.wait_until_finished()
  fresh = trainer.init_state(jax.random.PRNGKey(5))
  restored, restored_pending = checkpoints.restore(mngr, mngr.latest_step(), fresh)
  assert restored_pending == pending and restored_pending[0]['loss'].dtype == np.float32
  leaves = jax.tree_util.tree_leaves(state)
  assert len(leaves) == len(jax.tree_util.tree_leaves(restored))
  for a, b in zip(leaves, jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert int(restored.step) == 2
  # And training continues identically from either.
  batch = trainer.to_device(fixed_batch(seed=7))
  _, m1 = trainer.train_step(state, batch, jax.random.PRNGKey(1))
  _, m2 = trainer.train_step(restored, batch, jax.random.PRNGKey(1))
  assert float(m1['loss']) == float(m2['loss'])


DEVICE_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from tests.train_test import tiny_config, make_trainer, fixed_batch
    config = tiny_config(**{{'data.augment': 'crop_flip'}})
    trainer = make_trainer(config)
    state = trainer.init_state(jax.random.PRNGKey(0))
    losses = []
    for i in range(3):
      state, m = trainer.train_step(state, trainer.to_device(fixed_batch(seed=i)),
                                    jax.random.PRNGKey(1))
      losses.append(float(m['loss']))
    kernel = np.asarray(state.params['stage2_block1']['conv1']['kernel']).ravel()[:20]
    print(json.dumps({{'devices': jax.device_count(), 'losses': losses,
                      'kernel': kernel.tolist(), 'conv_impl': trainer.model.conv_impl}}))
''')


def run_with_devices(n):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run([sys.executable, '-c', DEVICE_SCRIPT.format(repo=REPO)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_devices_equal_one_device():
  one, four = run_with_devices(1), run_with_devices(4)
  assert one['devices'] == 1 and four['devices'] == 4
  # oneDNN's calls and fast_conv's batch chunks suit one device; split over four they
  # are slow (and the chunks can deadlock XLA:CPU's collectives), so the run takes XLA's
  # convolutions there.
  from resnet_jax.native import extension
  assert one['conv_impl'] == ('onednn' if extension.available() else 'fast')
  assert four['conv_impl'] == 'xla'
  np.testing.assert_allclose(four['losses'], one['losses'], rtol=1e-5)
  np.testing.assert_allclose(four['kernel'], one['kernel'], rtol=1e-4, atol=1e-6)


def test_batch_size_not_divisible_by_devices_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  with pytest.raises(ValueError, match='not divisible by the 3 devices'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))


def test_bfloat16_compute_keeps_float32_parameters_optimizer_state_and_loss():
  losses, states = {}, {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny_config(**{'model.dtype': dtype, 'optimizer.schedule': 'constant',
                            'optimizer.learning_rate': 0.05})
    trainer = make_trainer(config)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = trainer.to_device(fixed_batch())
    losses[dtype] = []
    for _ in range(4):
      state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(1))
      assert metrics['loss'].dtype == jnp.float32
      losses[dtype].append(float(metrics['loss']))
    states[dtype] = state
  for tree in (states['bfloat16'].params, states['bfloat16'].opt_state,
               states['bfloat16'].batch_stats):
    floats = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
  # The same trajectory within bfloat16's precision (8 bits of mantissa).
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.03)
  assert losses['bfloat16'][-1] < losses['bfloat16'][0]
