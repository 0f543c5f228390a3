"""The nets without normalisation: BatchNorm off, SkipInit, Fixup and TAT as config
fields of the one ResNet module (resnet_jax/model_variants.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config_lib
from resnet_jax import models
from resnet_jax.models import tat


def cifar(depth=20, **kwargs):
  kwargs.setdefault('shortcut', 'A')
  return models.create_model('cifar_resnet', depth=depth, **kwargs)


def init(model, x):
  return model.init(jax.random.PRNGKey(1), x, train=False)


def n_params(model):
  variables = jax.eval_shape(lambda: init(model, jnp.zeros((1, 32, 32, 3))))
  return models.count_params(variables['params'])


# (depth, BN net's count, channels of its convolutions (each one BN), blocks).
NETS = [(20, 269_722, 16 + 6 * (16 + 32 + 64), 9), (56, 853_018, 16 + 18 * (16 + 32 + 64), 27)]


@pytest.mark.parametrize('depth,bn_count,channels,blocks', NETS)
def test_param_counts_of_every_variant(depth, bn_count, channels, blocks):
  # Without BN a convolution trades BN's scale and offset for its own bias; SkipInit adds
  # a scalar a block; Fixup drops the biases for 5 scalars a block (4 biases and the
  # multiplier), one after the stem and one before the classifier.
  counts = {
      'none': n_params(cifar(depth, norm='none')),
      'plain none': n_params(cifar(depth, norm='none', shortcut='none')),
      'tat': n_params(cifar(depth, norm='none', shortcut='none', activation='tat')),
      'skipinit': n_params(cifar(depth, norm='none', branch_scale='skipinit')),
      'skipinit bn': n_params(cifar(depth, branch_scale='skipinit')),
      'fixup': n_params(cifar(depth, norm='none', branch_scale='fixup')),
  }
  assert counts == {
      'none': bn_count - channels, 'plain none': bn_count - channels,
      'tat': bn_count - channels, 'skipinit': bn_count - channels + blocks,
      'skipinit bn': bn_count + blocks, 'fixup': bn_count - 2 * channels + 5 * blocks + 2}
  assert counts['none'] == {20: 269_034, 56: 850_986}[depth]  # Pinned.
  assert counts['fixup'] == {20: 268_393, 56: 849_091}[depth]


@pytest.mark.parametrize('kwargs,key', [
    (dict(norm='layer'), 'norm'),
    (dict(branch_scale='rezero'), 'branch_scale'),
    (dict(activation='gelu'), 'activation'),
    (dict(shortcut='none', branch_scale='skipinit'), 'branch_scale'),
    (dict(branch_scale='fixup'), 'norm'),  # Fixup with BatchNorm.
    (dict(norm='none', branch_scale='fixup', preact=True), 'preact'),
    (dict(norm='none', activation='tat'), 'shortcut'),  # TAT on a residual net.
    (dict(shortcut='none', activation='tat'), 'norm'),  # TAT with BatchNorm.
    (dict(norm='none', zero_init_last_bn=True), 'zero_init_last_bn'),
])
def test_combinations_that_are_no_net_are_refused_naming_the_key(kwargs, key):
  with pytest.raises(ValueError, match=f'model.{key}'):
    init(cifar(8 if kwargs.get('activation') != 'tat' else 20, **kwargs),
         jnp.zeros((1, 8, 8, 3)))


def test_a_config_with_a_bad_variant_fails_validation_naming_it():
  config = config_lib.base_config()
  config.model.update(depth=8, num_filters=4, norm='none', branch_scale='fixup',
                      preact=True)
  with pytest.raises(config_lib.ConfigError, match='model.preact'):
    config_lib.validate(config)


def test_runs_saved_before_the_variant_keys_resume_unchanged():
  # A run saved without model.norm & co. computed their defaults: no change to refuse.
  saved = config_lib.base_config().to_dict()
  for key in ('norm', 'branch_scale', 'activation'):
    del saved['model'][key]
  config = config_lib.base_config()
  assert config_lib.config_changes(saved, config.to_dict()) == []
  config.model.norm = 'none'
  assert config_lib.config_changes(saved, config.to_dict()) == [
      'model.norm: <unset> -> none']


def test_tat_on_a_net_too_shallow_for_its_target_says_so():
  with pytest.raises(ValueError, match='deeper net'):
    init(cifar(8, norm='none', shortcut='none', activation='tat'), jnp.zeros((1, 8, 8, 3)))


def test_without_norm_no_batch_stats_and_convolutions_carry_zero_biases():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  v = init(cifar(8, norm='none', shortcut='B'), x)
  assert set(v) == {'params'}
  block = v['params']['stage2_block1']
  assert set(block) == {'conv1', 'conv2', 'proj_conv'}
  for layer in block.values():
    np.testing.assert_array_equal(layer['bias'], 0)
  # Fixup's convolutions have no biases of their own: its scalars stand in for them.
  fixup = init(cifar(8, norm='none', branch_scale='fixup'), x)['params']['stage1_block1']
  assert set(fixup) == {'conv1', 'conv2', 'bias1a', 'bias1b', 'bias2a', 'bias2b', 'scale'}
  assert 'bias' not in fixup['conv1']


@pytest.mark.parametrize('kwargs', [dict(norm='none', branch_scale='skipinit'),
                                    dict(branch_scale='skipinit'),
                                    dict(norm='none', branch_scale='fixup')])
def test_skipinit_and_fixup_nets_start_as_their_shortcuts(kwargs):
  # At initialisation every branch adds zero (SkipInit's scalar, Fixup's last layer), so
  # deleting every block that keeps its shape changes nothing; the scalars still learn.
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  m = cifar(14, scan_blocks=False, **kwargs)
  v = init(m, x)
  keep = jnp.zeros(6)
  np.testing.assert_allclose(m.apply(v, x, train=False),
                             m.apply(v, x, train=False, keep=keep), atol=1e-6)
  full = cifar(14, scan_blocks=False, shortcut='A')
  v_full = init(full, x)
  assert not np.allclose(full.apply(v_full, x, train=False),
                         full.apply(v_full, x, train=False, keep=keep), atol=1e-3)

  def loss(params):
    logits, _ = m.apply({**v, 'params': params}, x, train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4)).mean()
  grads = jax.grad(loss)(v['params'])
  # SkipInit's scalar learns from the first step; behind Fixup's zero classifier the body
  # waits for the classifier to move.
  if kwargs['branch_scale'] == 'fixup':
    assert np.any(grads['head']['kernel'])
    assert not np.any(grads['stage1_block2']['conv1']['kernel'])
  else:
    assert abs(float(grads['stage1_block2']['skip_scale'])) > 0


def test_fixup_initialisation():
  m = cifar(56, norm='none', branch_scale='fixup', scan_blocks=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  v = init(m, x)['params']
  # The branch's first layer: He's standard deviation times L**(-1/2) (m = 2 layers,
  # L = 27 branches); its last layer and the classifier start at zero, the multiplier at 1.
  kernels = np.concatenate([v[f'stage2_block{j}']['conv1']['kernel'].ravel()
                            for j in range(2, 10)])
  np.testing.assert_allclose(kernels.std(), np.sqrt(2 / (9 * 32)) / np.sqrt(27), rtol=0.03)
  np.testing.assert_allclose(v['stem_conv']['kernel'].std(), np.sqrt(2 / 27), rtol=0.2)
  assert not np.any(v['stage3_block9']['conv2']['kernel'])
  assert not np.any(v['head']['kernel']) and float(v['stage1_block1']['scale']) == 1.0
  np.testing.assert_array_equal(m.apply({'params': v}, x, train=False), 0)


def test_tat_kernels_are_delta_orthogonal():
  v = init(cifar(20, norm='none', shortcut='none', activation='tat', scan_blocks=False),
           jnp.zeros((1, 16, 16, 3)))['params']
  for kernel, gain in ((v['stage1_block2']['conv1']['kernel'], 1.0),
                       (v['stage2_block1']['conv1']['kernel'], 2.0)):  # 16 -> 32 wide.
    centre = np.asarray(kernel[1, 1])
    assert np.count_nonzero(kernel) == np.count_nonzero(centre) == centre.size
    np.testing.assert_allclose(centre @ centre.T, gain * np.eye(centre.shape[0]), atol=1e-5)
    np.testing.assert_array_equal(v['stage1_block2']['conv1']['bias'], 0)


def _leaky_relu_c_map(c, slope):
  """The C map of a leaky ReLU that keeps q = 1 (the arc-cosine kernel)."""
  relu_part = (np.sqrt(1 - c**2) + (np.pi - np.arccos(c)) * c) / np.pi
  return ((1 - slope)**2 * relu_part + 2 * slope * c) / (1 + slope**2)


@pytest.mark.parametrize('layers', [19, 55, 109])
def test_tat_leaky_relu_meets_its_targets(layers):
  # Checked against the kernel maps directly, not through dks: q = E[phi(z)^2] = 1 for
  # z ~ N(0, 1), and the chain of `layers` local C maps sends 0 to 0.9.
  slope, scale = tat.leaky_relu_params(layers)
  z, w = np.polynomial.hermite_e.hermegauss(101)
  phi = np.asarray(tat.activation(layers)(jnp.asarray(z, jnp.float32)), np.float64)
  np.testing.assert_allclose(np.sum(w * phi**2) / np.sqrt(2 * np.pi), 1.0, rtol=1e-5)
  np.testing.assert_allclose(scale, np.sqrt(2 / (1 + slope**2)), rtol=1e-9)
  c = 0.0
  for _ in range(layers):
    c = _leaky_relu_c_map(c, slope)
  np.testing.assert_allclose(c, 0.9, atol=1e-4)
  assert 0 < slope < 1 and slope > tat.leaky_relu_params(19)[0] - 1e-12


def test_deep_plain_net_without_norm_fails_to_train_where_its_bn_twin_trains():
  # 40 full-batch steps on 32 images at depth 56: the BN plain net fits them, its twin
  # without normalisation (He init) barely moves from chance (ln 10 = 2.30).
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 8, 8, 1))
  y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 10)
  final = {}
  for norm in ('batch', 'none'):
    m = cifar(56, num_filters=4, norm=norm, shortcut='none', scan_blocks=True)
    v = init(m, x)
    tx = optax.sgd(0.05, momentum=0.9)

    @jax.jit
    def step(params, stats, opt, m=m, tx=tx):
      def loss(p):
        logits, upd = m.apply({'params': p, 'batch_stats': stats}, x, train=True,
                              mutable=['batch_stats'])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
      (value, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt = tx.update(g, opt, params)
      return optax.apply_updates(params, updates), upd.get('batch_stats', stats), opt, value
    params, stats = v['params'], v.get('batch_stats', {})
    opt = tx.init(params)
    for _ in range(40):
      params, stats, opt, value = step(params, stats, opt)
    final[norm] = float(value)
  assert final['batch'] < 1.5 and final['none'] > 2.0, final
