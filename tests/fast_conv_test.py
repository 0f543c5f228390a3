"""The CPU fast path of convolution gradients equals XLA's for every shape the models use."""

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from resnet_jax.models import fast_conv

DN = ('NHWC', 'HWIO', 'NHWC')


def both_grads(conv, x, w, strides, padding):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  f = lambda x, w: conv(x, w, strides, padding, dimension_numbers=dn)
  y, vjp = jax.vjp(f, x, w)
  g = jax.random.normal(jax.random.PRNGKey(9), y.shape)
  return y, vjp(g)


# (batch, size, in, out, kernel, stride, padding): the 3x3 and 1x1 convolutions of the
# CIFAR and ImageNet families, the 7x7/2 stem, odd sizes and a batch of 1.
CASES = [
    (16, 28, 16, 16, 3, 1, 'SAME'), (8, 28, 16, 32, 3, 2, 'SAME'),
    (8, 7, 64, 64, 3, 1, 'SAME'), (8, 7, 32, 64, 3, 2, 'SAME'),
    (4, 14, 16, 32, 1, 2, 'SAME'), (4, 9, 8, 16, 1, 1, 'SAME'),
    (2, 32, 3, 8, 7, 2, [(3, 3), (3, 3)]), (1, 28, 1, 32, 3, 1, 'SAME'),
    (128, 8, 4, 4, 3, 1, 'SAME'),  # Several chunks under lax.scan.
]


@pytest.mark.parametrize('n,h,cin,cout,k,s,padding', CASES)
def test_fast_conv_matches_xla(n, h, cin, cout, k, s, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (n, h, h, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout)) / np.sqrt(k * k * cin)
  y_ref, (dx_ref, dw_ref) = both_grads(lax.conv_general_dilated, x, w, (s, s), padding)
  y, (dx, dw) = both_grads(fast_conv.conv_general_dilated, x, w, (s, s), padding)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(dx_ref).max()))
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(dw_ref).max()))


@pytest.mark.parametrize('s,form', [(1, 'conv_general_dilated'), (2, 'dot_general')])
def test_weight_grad_takes_the_form_for_its_stride(s, form):
  """Stride 1: one swapped forward convolution; strided: im2col matmuls."""
  x = jnp.ones((4, 8, 8, 3))
  g = jnp.ones((4, 8 // s, 8 // s, 5))
  jaxpr = str(jax.make_jaxpr(lambda x, g: fast_conv.weight_grad(
      x, g, (3, 3, 3, 5), (s, s), ((1, 1), (1, 1))))(x, g))
  other = {'conv_general_dilated', 'dot_general'} - {form}
  assert form in jaxpr and other.pop() not in jaxpr


def test_weight_grad_forms_agree_in_bfloat16():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3)).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 5)).astype(jnp.bfloat16)
  args = (x, g, (3, 3, 3, 5))
  swapped = fast_conv.swapped_weight_grad(*args, ((1, 1), (1, 1)))
  im2col = fast_conv.im2col_weight_grad(*args, (1, 1), ((1, 1), (1, 1)))
  assert swapped.dtype == im2col.dtype == jnp.float32
  np.testing.assert_allclose(swapped, im2col, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('n', [5, 12])
def test_swapped_weight_grad_over_unrolled_and_scanned_chunks(n, monkeypatch):
  """One image per chunk: 5 chunks unrolled; 12 as a scan of 2 steps of 6 unrolled."""
  monkeypatch.setattr(fast_conv, '_SWAPPED_MAX_IMAGES', 1)
  x = jax.random.normal(jax.random.PRNGKey(0), (n, 6, 6, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  y, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                      dimension_numbers=DN), w)
  g = jax.random.normal(jax.random.PRNGKey(2), y.shape)
  jaxpr = str(jax.make_jaxpr(fast_conv.swapped_weight_grad, static_argnums=(2, 3))(
      x, g, w.shape, ((1, 1), (1, 1))))
  assert ('scan' in jaxpr) == (n == 12)
  dw = fast_conv.swapped_weight_grad(x, g, w.shape, ((1, 1), (1, 1)))
  np.testing.assert_allclose(dw, vjp(g)[0], rtol=1e-5, atol=1e-5)


def test_chunked_weight_grad_uses_several_chunks():
  assert fast_conv._chunk_size(128, 32 * 32) == 8
  assert fast_conv._chunk_size(6, 28 * 28) == 6
  assert fast_conv._chunk_size(7, 100 * 100) == 1
  # The swapped form's chunks: ResNet-56's three stages at batch 128, an odd batch.
  assert [fast_conv._swapped_chunk_size(128, h * h * c)
          for h, c in ((32, 16), (16, 32), (8, 64))] == [16, 32, 32]
  assert fast_conv._swapped_chunk_size(7, 100) == 7


def test_unsupported_convolutions_fall_back_to_xla():
  x = jnp.ones((2, 8, 8, 4))
  w = jnp.ones((3, 3, 2, 4))  # Grouped: 2 groups.
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  y = fast_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn,
                                     feature_group_count=2)
  assert y.shape == (2, 8, 8, 4)


def test_model_gradients_equal_with_both_conv_impls():
  from resnet_jax import models
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  grads = []
  for impl in ('fast', 'xla'):
    m = models.create_model('cifar_resnet', depth=8, conv_impl=impl)
    v = m.init(jax.random.PRNGKey(1), x, train=False)
    loss = lambda p: m.apply({**v, 'params': p}, x, train=True,
                             mutable=['batch_stats'])[0].sum()
    grads.append(jax.grad(loss)(v['params']))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         *grads)
