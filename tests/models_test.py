"""The model zoo: parameter counts, shortcuts, plain twins, scan == unrolled, intermediates."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models


def n_params(model, shape):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                                train=False))
  return models.count_params(variables['params'])


@pytest.mark.parametrize('depth,count', [(20, 269_722), (32, 464_154), (44, 658_586),
                                         (56, 853_018), (110, 1_727_962),
                                         (1202, 19_421_274)])
def test_cifar_param_counts_match_paper_and_plain_twin(depth, count):
  # The paper: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M.
  residual = n_params(models.create_model('cifar_resnet', depth=depth), (1, 32, 32, 3))
  plain = n_params(models.create_model('cifar_resnet', depth=depth, shortcut='none'),
                   (1, 32, 32, 3))
  assert residual == count
  assert plain == residual


@pytest.mark.parametrize('depth,count', [(18, 11_689_512), (34, 21_797_672),
                                         (50, 25_557_032), (101, 44_549_160),
                                         (152, 60_192_808)])
def test_imagenet_param_counts_match_reference(depth, count):
  assert n_params(models.create_model('imagenet_resnet', depth=depth),
                  (1, 224, 224, 3)) == count


def test_seed_model_matches_keras_count():
  assert n_params(models.create_model('seed_resnet'), (1, 28, 28, 1)) == 288_202


def test_cifar_depth_must_be_6n_plus_2():
  with pytest.raises(ValueError, match='6n\\+2'):
    models.create_model('cifar_resnet', depth=21)


def test_unknown_model_and_shortcut_are_refused():
  with pytest.raises(ValueError, match='Unknown model'):
    models.create_model('resnet9000')
  with pytest.raises(ValueError, match='Unknown shortcut'):
    models.create_model('cifar_resnet', depth=8, shortcut='D').init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def test_identity_shortcut_across_shape_change_names_shapes():
  model = models.create_model('cifar_resnet', depth=8, shortcut='identity')
  with pytest.raises(ValueError) as err:
    model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)))
  msg = str(err.value)
  assert '(2, 8, 8, 16)' in msg and '(2, 4, 4, 32)' in msg and 'shortcut="A"' in msg


def block_params(shortcut, strides, cin, cout, preact=False, block=models.BasicBlock):
  import functools
  import flax.linen as nn
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  b = block(filters=cout, conv=conv, norm=norm, strides=strides, shortcut=shortcut,
            preact=preact)
  v = b.init(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, cin)))
  return b, v


def test_shortcut_parameters():
  # A: no parameters even across a shape change; B: a projection only where shapes
  # change; C: a projection always; none: the same layers as A.
  for shortcut, strides, cin, cout, has_proj in [
      ('A', 2, 16, 32, False), ('B', 2, 16, 32, True), ('B', 1, 16, 16, False),
      ('C', 1, 16, 16, True), ('none', 2, 16, 32, False), ('identity', 1, 16, 16, False)]:
    _, v = block_params(shortcut, strides, cin, cout)
    assert ('proj_conv' in v['params']) == has_proj, (shortcut, strides)
  _, a = block_params('A', 2, 16, 32)
  _, none = block_params('none', 2, 16, 32)
  assert models.count_params(a['params']) == models.count_params(none['params'])


def test_option_a_zero_pads_subsampled_input():
  b, v = block_params('A', 2, 4, 8)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
  plain = block_params('none', 2, 4, 8)[0]
  y_res = b.apply(v, x)
  y_plain = plain.apply(v, x)  # Same parameters, no addition.
  # Recover the pre-ReLU branch where both are positive: residual - plain = shortcut.
  sc = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (2, 2)))
  both = (y_res > 0) & (y_plain > 0)
  np.testing.assert_allclose(jnp.where(both, y_res - y_plain, 0),
                             jnp.where(both, sc, 0), atol=1e-5)


def test_plain_and_residual_twins_share_params_but_differ():
  res = models.create_model('cifar_resnet', depth=8)
  plain = models.create_model('cifar_resnet', depth=8, shortcut='none')
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  v = res.init(jax.random.PRNGKey(1), x, train=False)
  v_plain = plain.init(jax.random.PRNGKey(1), x, train=False)
  assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(v_plain)
  assert not np.allclose(res.apply(v, x, train=False), plain.apply(v, x, train=False))


def unrolled_to_scanned(params, stage_sizes):
  """Stacks the unrolled blocks 2..n of each stage into the scanned layout."""
  params = flax.core.unfreeze(params)
  out = {}
  for key, value in params.items():
    if '_block' in key and not key.endswith('_block1'):
      continue
    out[key] = value
  for i, size in enumerate(stage_sizes):
    if size > 1:
      blocks = [params[f'stage{i + 1}_block{j + 1}'] for j in range(1, size)]
      out[f'stage{i + 1}_blocks'] = {'block': jax.tree_util.tree_map(
          lambda *xs: jnp.stack(xs), *blocks)}
  return out


@pytest.mark.parametrize('shortcut', ['A', 'none', 'C'])
def test_scan_equals_unrolled(shortcut):
  kw = dict(depth=14, shortcut=shortcut)
  unrolled = models.create_model('cifar_resnet', scan_blocks=False, **kw)
  scanned = models.create_model('cifar_resnet', scan_blocks=True, **kw)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  # Jitted, and the scanned model's shapes only: op by op, the two inits took 10 s.
  v = jax.jit(lambda key: unrolled.init(key, x, train=False))(jax.random.PRNGKey(1))
  v_scan = {c: unrolled_to_scanned(v[c], [2, 2, 2]) for c in v}
  shapes = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(1), x))
  assert jax.tree_util.tree_map(jnp.shape, v_scan) == jax.tree_util.tree_map(
      lambda s: s.shape, flax.core.unfreeze(shapes))
  # Training mode: the same outputs and the same updated BatchNorm statistics.
  train_apply = lambda m: jax.jit(lambda v: m.apply(v, x, train=True, mutable=['batch_stats']))
  y, upd = train_apply(unrolled)(v)
  y_scan, upd_scan = train_apply(scanned)(v_scan)
  np.testing.assert_allclose(y, y_scan, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      upd['batch_stats']['stage3_block2']['bn2']['var'],
      upd_scan['batch_stats']['stage3_blocks']['block']['bn2']['var'][0], rtol=1e-5)
  # And the same gradients.
  grad = lambda m: jax.jit(jax.grad(
      lambda p, bs: m.apply({'params': p, 'batch_stats': bs}, x, train=False).sum()))
  g = grad(unrolled)(v['params'], v['batch_stats'])
  g_scan = grad(scanned)(v_scan['params'], v_scan['batch_stats'])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         unrolled_to_scanned(g, [2, 2, 2]), g_scan)


def test_remat_computes_the_same_function():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  m = models.create_model('cifar_resnet', depth=14)
  m_remat = models.create_model('cifar_resnet', depth=14, remat=True)
  v = jax.jit(lambda key: m.init(key, x, train=False))(jax.random.PRNGKey(1))
  grad = lambda mod: jax.jit(jax.grad(
      lambda p: mod.apply({**v, 'params': p}, x, train=False).sum()))
  g = grad(m)(v['params'])
  g_remat = grad(m_remat)(v['params'])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         g, g_remat)


def test_intermediates_on_request():
  model = models.create_model('cifar_resnet', depth=20)
  x = jnp.ones((2, 16, 16, 3))
  v = model.init(jax.random.PRNGKey(0), x, train=False)
  _, state = model.apply(v, x, train=False, mutable=['intermediates'])
  leaves = jax.tree_util.tree_leaves_with_path(state['intermediates'])
  responses = [l for p, l in leaves if 'responses' in jax.tree_util.keystr(p)]
  # Stem + 2 per block; scanned blocks stack theirs on a leading axis.
  n_layers = sum(l.shape[0] if l.ndim == 5 else 1 for l in responses)
  assert n_layers == 19
  # Without asking, nothing extra is returned.
  assert isinstance(model.apply(v, x, train=False), jax.Array)


def test_zero_init_last_bn_only_for_residual_nets():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  for shortcut, expect_zero in [('A', True), ('none', False)]:
    m = models.create_model('cifar_resnet', depth=8, shortcut=shortcut,
                            zero_init_last_bn=True)
    v = m.init(jax.random.PRNGKey(1), x, train=False)
    scale = v['params']['stage1_block1']['bn2']['scale']
    assert bool(jnp.all(scale == 0)) == expect_zero


def test_zero_init_head_starts_plain_and_residual_nets_at_chance():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  for shortcut in ('A', 'none'):
    stems = []
    for zero in (False, True):
      m = models.create_model('cifar_resnet', depth=8, shortcut=shortcut, zero_init_head=zero)
      v = m.init(jax.random.PRNGKey(1), x, train=False)
      assert bool(jnp.all(m.apply(v, x, train=False) == 0)) == zero
      stems.append(v['params']['stem_conv']['kernel'])
    # The body's initialisation does not depend on the head's.
    np.testing.assert_array_equal(*stems)


def test_bottleneck_and_preact_variants():
  x = jnp.ones((2, 64, 64, 3))
  for preact in (False, True):  # Shapes only: run op by op, ResNet-50 takes half a minute.
    m = models.create_model('imagenet_resnet', depth=50, preact=preact, num_classes=7,
                            num_filters=8)
    v = jax.eval_shape(lambda m=m: m.init(jax.random.PRNGKey(0), x, train=False))
    assert jax.eval_shape(lambda v, m=m: m.apply(v, x, train=False), v).shape == (2, 7)
    block = v['params']['stage1_block1']
    assert block['conv3']['kernel'].shape == (1, 1, 8, 32)  # Expansion 4.
    assert 'proj_conv' in block  # B: 8 -> 32 channels needs a projection.
  m = models.create_model('cifar_resnet', depth=8, preact=True, shortcut='A')
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  assert 'final_bn' in v['params'] and 'stem_bn' not in v['params']
  assert np.isfinite(m.apply(v, x, train=False)).all()


def test_dtype_and_param_dtype_are_separate():
  m = models.create_model('cifar_resnet', depth=8, dtype='bfloat16')
  x = jnp.ones((2, 16, 16, 3))
  v = m.init(jax.random.PRNGKey(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v['params']))
  assert m.apply(v, x, train=False).dtype == jnp.float32  # Logits for the loss.
