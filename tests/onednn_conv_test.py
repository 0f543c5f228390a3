"""The oneDNN convolutions (resnet_jax/models/onednn_conv.py) against XLA's."""

import platform

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax import trainer
from resnet_jax.analysis import sharpness
from resnet_jax.models import conv_impls
from resnet_jax.models import onednn_conv
from resnet_jax.native import build

NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.fixture(autouse=True, scope='module')
def extension():
  """Set-up builds the extension on Linux x86-64: there its absence is a failure, unless
  the machine has no C++ compiler; elsewhere these tests are skipped."""
  if onednn_conv.available():
    return
  why = onednn_conv.load_error()
  if platform.system() != 'Linux' or platform.machine() != 'x86_64':
    pytest.skip(f'no oneDNN wheels for this platform: {why}')
  if build.command()[1].startswith('no C++ compiler'):
    pytest.skip(f'the extension cannot be built here: {build.command()[1]}')
  pytest.fail(f'The oneDNN extension is not loaded: {why}.')


def losses(conv, x, w, strides, pads):
  """sum(sin(conv)) and its gradients: every output element with its own weight."""
  def f(x, w):
    return jnp.sum(jnp.sin(conv(x, w, strides, pads)))
  return jax.jit(jax.value_and_grad(f, (0, 1)))(x, w)


def xla(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


# Every kind of convolution the models use, and uneven sizes and paddings.
CASES = [
    ((4, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),  # 3x3, SAME
    ((4, 10, 10, 3), (3, 3, 3, 5), (2, 2), ((0, 1), (0, 1))),  # 3x3/2 SAME, even input
    ((4, 9, 9, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1))),  # 3x3/2, odd input
    ((3, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),  # 1x1/2 projection
    ((2, 16, 16, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),  # ImageNet stem
    ((1, 7, 6, 2), (3, 2, 2, 3), (1, 2), ((0, 2), (2, 1))),  # uneven everything
]


@pytest.mark.parametrize('x_shape,w_shape,strides,pads', CASES)
def test_value_and_both_gradients_equal_xlas(x_shape, w_shape, strides, pads):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), w_shape)
  want, got = losses(xla, x, w, strides, pads), losses(onednn_conv.conv, x, w, strides, pads)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, e in zip(got[1], want[1]):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.abs(e).max()))


def test_repeated_calls_are_identical_and_vmap_runs_each_item():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 12, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4, 4))
  pads = ((1, 1), (1, 1))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn_conv.conv(x, w, (1, 1), pads) ** 2), 1))
  first, second = grad(x, w[0]), grad(x, w[0])
  np.testing.assert_array_equal(first, second)  # Resumed runs repeat a run exactly.
  batched = jax.jit(jax.vmap(lambda w: onednn_conv.conv(x, w, (1, 1), pads)))(w)
  for i in range(3):
    np.testing.assert_allclose(batched[i], xla(x, w[i], (1, 1), pads), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kwargs', [
    dict(name='cifar_resnet', depth=14, shortcut='A', scan_blocks=True),
    dict(name='cifar_resnet', depth=8, shortcut='B', scan_blocks=False, preact=True),
    dict(name='seed_resnet', filters=4),
], ids=['cifar-scanned', 'cifar-preact-B', 'seed'])
def test_a_models_gradients_equal_with_every_conv_impl(kwargs):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  grads = []
  for impl in conv_impls.NAMES:
    m = models.create_model(num_classes=10, conv_impl=impl, **kwargs)
    v = m.init(jax.random.PRNGKey(1), x, train=False)
    loss = lambda p, m=m, v=v: jnp.sum(jnp.sin(m.apply(
        {**v, 'params': p}, x, train=True, mutable=['batch_stats'])[0]))
    grads.append(jax.jit(jax.grad(loss))(v['params']))
  for other in grads[:2]:
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), other, grads[2])


def test_other_dtypes_and_convolutions_take_fast_conv():
  onednn = conv_impls.function('onednn')

  def jaxpr(x, w, **kwargs):
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)  # As flax's nn.Conv passes.
    return str(jax.make_jaxpr(
        lambda x, w: onednn(x, w, (1, 1), 'SAME', dimension_numbers=dn, **kwargs))(x, w))

  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  assert 'onednn_conv_forward' in jaxpr(x, w)
  for text in (jaxpr(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)),
               jaxpr(x, w, rhs_dilation=(2, 2))):
    assert 'onednn' not in text and 'conv_general_dilated' in text
  with pytest.raises(ValueError, match="conv_impl 'cudnn'"):
    conv_impls.function('cudnn')


def test_runs_fall_back_to_fast_conv_where_the_extension_does_not_load(monkeypatch, caplog):
  assert trainer.conv_impl('onednn') == 'onednn'
  assert 'resnet_jax.native.build' in onednn_conv.load_error.__wrapped__('/nowhere/x.so')
  monkeypatch.setattr(onednn_conv, 'available', lambda: False)
  trainer._say_onednn_is_missing.cache_clear()
  assert trainer.conv_impl('onednn') == 'fast'
  assert trainer.conv_impl('onednn') == 'fast'
  said = [r.getMessage() for r in caplog.records if 'oneDNN' in r.getMessage()]
  assert len(said) == 1 and 'fast_conv' in said[0]  # Once a process.
  assert trainer.conv_impl('xla') == 'xla'


def test_the_sharpness_products_take_fast_conv_and_agree():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 3))
  chunks = (x[None], (jnp.arange(8) % 10)[None], jnp.ones((1, 8)))
  products = []
  for impl in ('onednn', 'fast'):
    m = models.create_model('cifar_resnet', depth=8, num_classes=10, conv_impl=impl)
    v = m.init(jax.random.PRNGKey(1), x, train=False)
    hvp, flat = sharpness.hvp_fn(m, v['params'])
    products.append(hvp(flat, jnp.ones_like(flat), v['batch_stats'], chunks))
  np.testing.assert_allclose(products[0], products[1], rtol=1e-5)
