"""oneDNN's BatchNorm and the fused residual tail (resnet_jax/models/onednn_norm.py)
against Flax's and XLA's."""

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models import onednn_norm
from resnet_jax.native import extension
from tests import onednn_conv_test


@pytest.fixture(autouse=True, scope='module')
def extension_loaded():
  """As tests/onednn_conv_test.py: skipped only where the extension cannot be built."""
  onednn_conv_test.require_extension()


def inputs(shape, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  c = shape[-1]
  return (jax.random.normal(k[0], shape) * 3 + 1, 1 + jax.random.normal(k[1], (c,)) / 2,
          jax.random.normal(k[2], (c,)), jax.random.normal(k[3], shape))


def value_and_grads(f, x, scale, bias, w, relu):
  """sum(y * w) with every output element its own weight, its gradients, mean and var."""
  def loss(x, scale, bias):
    y, mean, var = f(x, scale, bias, 1e-5, relu)
    return jnp.sum(y * w), (mean, var)
  return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, scale, bias)


@pytest.mark.parametrize('relu', [False, True], ids=['bn', 'bn-relu'])
@pytest.mark.parametrize('shape', [(8, 9, 9, 16), (3, 5, 7, 4), (128, 4, 4, 8)])
def test_values_statistics_and_gradients_equal_xlas(shape, relu):
  x, scale, bias, w = inputs(shape)
  (want, (want_mean, want_var)), want_grads = value_and_grads(
      onednn_norm.reference, x, scale, bias, w, relu)
  (got, (mean, var)), grads = value_and_grads(onednn_norm.batch_norm, x, scale, bias, w,
                                              relu)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, want_var, rtol=1e-4)
  for g, e in zip(grads, want_grads):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.abs(e).max()))


@pytest.mark.parametrize('shape', [(8, 9, 9, 16), (3, 5, 7, 10), (64, 4, 4, 72)])
def test_the_residual_tail_equals_xlas_values_statistics_and_four_gradients(shape):
  """relu(BN(x) + residual): 10 channels and 3*5*7 rows leave a part period at the end."""
  x, scale, bias, w = inputs(shape)
  residual = jax.random.normal(jax.random.PRNGKey(7), shape) * 2

  def loss(f):
    def value(x, scale, bias, residual):
      y, mean, var = f(x, scale, bias, residual)
      return jnp.sum(y * w), (mean, var)
    return jax.jit(jax.value_and_grad(value, (0, 1, 2, 3), has_aux=True))(
        x, scale, bias, residual)

  (want, (want_mean, want_var)), want_grads = loss(
      lambda x, s, b, r: onednn_norm.reference(x, s, b, 1e-5, True, r))
  (got, (mean, var)), grads = loss(
      lambda x, s, b, r: onednn_norm.batch_norm_add_relu(x, s, b, r, 1e-5))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, want_var, rtol=1e-4)
  for g, e in zip(grads, want_grads):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.abs(e).max()))
  assert float(jnp.mean(grads[3] == 0)) > 0.2  # The ReLU stopped some of the gradient.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(
      onednn_norm.batch_norm_add_relu(x, scale, bias, residual, 1e-5)[0] * w)))
  np.testing.assert_array_equal(grad(x), grad(x))  # Resumed runs repeat a run exactly.


def test_the_module_is_flaxs_batchnorm_with_the_same_variables_and_running_averages():
  x = inputs((6, 5, 5, 8))[0]
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  ours = onednn_norm.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = flax_bn.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x)) == (
      jax.tree_util.tree_structure(variables))
  variables = {'params': {'scale': jnp.linspace(0.5, 2, 8), 'bias': jnp.linspace(-1, 1, 8)},
               'batch_stats': {'mean': jnp.full(8, 0.3), 'var': jnp.full(8, 2.0)}}
  want, want_stats = flax_bn.apply(variables, x, mutable=['batch_stats'])
  r = jnp.cos(x)
  for relu, residual, expect in ((False, None, want), (True, None, jax.nn.relu(want)),
                                 (True, r, jax.nn.relu(want + r)), (False, r, want + r)):
    got, stats = jax.jit(lambda v, x, relu=relu, residual=residual: ours.apply(
        v, x, relu=relu, residual=residual, mutable=['batch_stats']))(variables, x)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
                           stats, want_stats)
  # Evaluation (the running averages) and other dtypes are Flax's own computation.
  evaluate = onednn_norm.BatchNorm(use_running_average=True)
  np.testing.assert_array_equal(evaluate.apply(variables, x, relu=True),
                                jax.nn.relu(nn.BatchNorm(True).apply(variables, x)))
  np.testing.assert_array_equal(evaluate.apply(variables, x, relu=True, residual=r),
                                jax.nn.relu(nn.BatchNorm(True).apply(variables, x) + r))
  text = str(jax.make_jaxpr(lambda x: ours.apply(variables, x, mutable=['batch_stats']))(
      x.astype(jnp.bfloat16)))
  assert 'onednn_norm' not in text


def test_repeated_calls_are_identical_and_vmap_runs_each_item():
  x, scale, bias, w = inputs((16, 6, 6, 8))
  grad = jax.jit(jax.grad(
      lambda x: jnp.sum(onednn_norm.batch_norm(x, scale, bias, 1e-5, True)[0] * w)))
  np.testing.assert_array_equal(grad(x), grad(x))  # Resumed runs repeat a run exactly.
  xs = jnp.stack([x, 2 * x + 1])
  batched = jax.jit(jax.vmap(lambda x: onednn_norm.batch_norm(x, scale, bias, 1e-5)[0]))(xs)
  for i in range(2):
    np.testing.assert_allclose(
        batched[i], onednn_norm.reference(xs[i], scale, bias, 1e-5, False)[0], rtol=1e-4,
        atol=1e-4)


def test_a_models_responses_and_gradients_equal_flaxs_and_the_relu_is_fused():
  """The fused call where no one collects the responses; the layers analysis, which
  collects them, gets each BatchNorm's output before its ReLU as with Flax's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 12, 3))
  results = {}
  for impl in ('onednn', 'fast'):
    for shortcut in ('A', 'none'):
      m = models.create_model('cifar_resnet', depth=8, num_classes=10, conv_impl=impl,
                              shortcut=shortcut, scan_blocks=False)
      v = m.init(jax.random.PRNGKey(1), x, train=False)
      loss = lambda p, m=m, v=v: jnp.sum(jnp.sin(m.apply(
          {**v, 'params': p}, x, train=True, mutable=['batch_stats'])[0]))
      _, collected = m.apply(v, x, train=True, mutable=['batch_stats', 'intermediates'])
      results[impl, shortcut] = (jax.jit(jax.grad(loss))(v['params']),
                                 collected['intermediates'])
      if impl == 'onednn':
        text = jax.jit(loss).lower(v['params']).as_text()
        fused = len(re.findall(r'onednn_norm_forward\(.*relu = true', text))
        tails = len(re.findall(r'norm_add_relu_forward\(', text))
        # ResNet-8: the stem and each block's first BN, and each block's tail;
        # plain-8: every BN.
        assert (fused, tails) == ((4, 3) if shortcut == 'A' else (7, 0)), (shortcut, fused)
  for shortcut in ('A', 'none'):
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
        results['onednn', shortcut], results['fast', shortcut])


@pytest.mark.parametrize('shapes,message', [
    (((2, 4, 4, 3), (4,), (2, 4, 4, 3)), 'one value per channel'),
    (((2, 4, 4, 3), (3,), (2, 4, 4, 4)), 'must have one shape'),
    (((2, 4, 3), (3,), (2, 4, 3)), 'must be 4-D'),
])
def test_buffers_that_disagree_are_an_error_not_a_write_out_of_bounds(shapes, message):
  x_shape, c_shape, y_shape = shapes
  out = (jax.ShapeDtypeStruct(y_shape, jnp.float32),
         jax.ShapeDtypeStruct(c_shape, jnp.float32),
         jax.ShapeDtypeStruct(c_shape, jnp.float32), jax.ShapeDtypeStruct((0,), jnp.uint8))
  call = jax.ffi.ffi_call('onednn_norm_forward', out)
  with pytest.raises(Exception, match=message):
    jax.block_until_ready(call(jnp.ones(x_shape), jnp.ones(c_shape), jnp.ones(c_shape),
                               epsilon=np.float32(1e-5), relu=False))


@pytest.mark.parametrize('shapes,message', [
    (((2, 4, 4, 3), (4,), (2, 4, 4, 3)), 'one value per channel'),
    (((2, 4, 4, 3), (3,), (2, 4, 5, 3)), 'must have one shape'),
    (((2, 4, 3), (3,), (2, 4, 3)), 'must be 4-D'),
])
def test_a_residual_tail_whose_buffers_disagree_is_an_error(shapes, message):
  x_shape, c_shape, r_shape = shapes
  out = (jax.ShapeDtypeStruct(x_shape, jnp.float32),
         jax.ShapeDtypeStruct(c_shape, jnp.float32), jax.ShapeDtypeStruct(c_shape, jnp.float32))
  call = jax.ffi.ffi_call('norm_add_relu_forward', out)
  with pytest.raises(Exception, match=message):
    jax.block_until_ready(call(jnp.ones(x_shape), jnp.ones(c_shape), jnp.ones(c_shape),
                               jnp.ones(r_shape), epsilon=np.float32(1e-5)))


def test_a_workspace_of_the_wrong_size_is_an_error():
  x = jnp.ones((2, 4, 4, 3))
  want = onednn_norm._workspace_bytes((2, 4, 4, 3), 1e-5, True)
  out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32),
         jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((want + 1,), jnp.uint8))
  call = jax.ffi.ffi_call('onednn_norm_forward', out)
  with pytest.raises(Exception, match=f'workspace must have {want} bytes'):
    jax.block_until_ready(call(x, jnp.ones(3), jnp.ones(3), epsilon=np.float32(1e-5),
                               relu=True))


def test_float32_math_stays_strict_whatever_the_environment_says():
  code = ('import ctypes, sys; lib = ctypes.cdll.LoadLibrary(sys.argv[1]); '
          'm = ctypes.c_int(-1); assert lib.OnednnNormFpmathMode(ctypes.byref(m)) == 0; '
          'print(m.value)')
  out = subprocess.run([sys.executable, '-c', code, extension.LIBRARY],
                       env=dict(os.environ, ONEDNN_DEFAULT_FPMATH_MODE='BF16'),
                       capture_output=True, text=True, timeout=60)
  assert out.stdout.split() == ['0'], (out.stdout, out.stderr)
