"""BatchNorm's training pass on oneDNN (CPU), with the ReLU after it fused where a layer
has one, and with a residual block's addition and ReLU fused where it ends one.

XLA:CPU runs BatchNorm's statistics, normalisation and gradient as several passes over
the activations (a reduction and elementwise fusions each); oneDNN's batch-normalization
primitives, which PyTorch calls, do the forward pass and the gradient in one call each,
and take the ReLU that follows into the same call (its mask kept in a workspace).
`batch_norm` is a `jax.custom_vjp` over the extension's two `jax.ffi` calls
(`resnet_jax/native/onednn_norm.cc`). oneDNN fuses a residual block's tail,
relu(BatchNorm(x) + shortcut), only on GPUs, so `batch_norm_add_relu` calls the
extension's own C++ for it (`norm_add_relu.cc`: two passes over the activations each
way, where oneDNN's BatchNorm and XLA's addition, ReLU and mask took three or more).
GPU and TPU lower the same formulas in XLA (`lax.platform_dependent`). `BatchNorm` is
Flax's module with the same variables, whose training pass calls it; the models take it
with `model.conv_impl='onednn'` (resnet.py) and fall back to Flax's where the extension
cannot run (`trainer.conv_impl`). Reverse mode only, as the convolutions.
"""

import ctypes
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from resnet_jax.native import extension


def reference(x, scale, bias, epsilon: float, relu: bool, residual=None):
  """(y, mean, var) in XLA: Flax's BatchNorm in training (its fast variance, clipped at
  0), plus `residual` where given, then the ReLU where `relu`."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(jnp.mean(x * x, axes) - mean * mean, 0.0)
  y = (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
  y = y if residual is None else y + residual
  return (jax.nn.relu(y) if relu else y), mean, var


def batch_norm(x, scale, bias, epsilon: float, relu: bool = False):
  """(y, mean, var): float32 NHWC `x` normalised by its batch's mean and (biased)
  variance over N, H and W, times `scale` plus `bias`, through a ReLU where `relu`.
  mean and var carry no gradient (they feed the running averages)."""
  y, mean, var = _batch_norm(x, scale, bias, float(epsilon), bool(relu))
  return y, lax.stop_gradient(mean), lax.stop_gradient(var)


def batch_norm_add_relu(x, scale, bias, residual, epsilon: float):
  """(relu(y + residual), mean, var) for y, mean and var of `batch_norm(x, scale, bias,
  epsilon)`: a post-activation residual block's last BatchNorm, its shortcut `residual`
  (x's shape) and the ReLU, in one call forward and one back."""
  out, mean, var = _norm_add_relu(x, scale, bias, residual, float(epsilon))
  return out, lax.stop_gradient(mean), lax.stop_gradient(var)


@functools.cache
def _workspace_bytes(shape, epsilon: float, relu: bool) -> int:
  """The bytes of the fused ReLU's mask for activations of `shape` (0 without it)."""
  extension.check('onednn')
  lib = extension.library()
  lib.OnednnNormWorkspaceBytes.restype = ctypes.c_int64
  lib.OnednnNormWorkspaceBytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_float,
                                                                  ctypes.c_int]
  size = lib.OnednnNormWorkspaceBytes(*shape, epsilon, int(relu))
  if size < 0:
    raise RuntimeError(f'oneDNN has no batch normalization for activations of shape {shape}.')
  return size


def _onednn_forward(x, scale, bias, epsilon, relu):
  c = x.shape[-1]
  ws = _workspace_bytes(tuple(x.shape), epsilon, relu)
  out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((c,), x.dtype),
         jax.ShapeDtypeStruct((c,), x.dtype), jax.ShapeDtypeStruct((ws,), jnp.uint8))
  return jax.ffi.ffi_call('onednn_norm_forward', out, vmap_method='sequential')(
      x, scale, bias, epsilon=np.float32(epsilon), relu=relu)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm(x, scale, bias, epsilon, relu):
  return _forward(x, scale, bias, epsilon, relu)[0]


def _forward(x, scale, bias, epsilon, relu):
  def xla(x, scale, bias):
    y, mean, var = reference(x, scale, bias, epsilon, relu)
    ws = _workspace_bytes(tuple(x.shape), epsilon, relu)
    return y, mean, var, jnp.zeros((ws,), jnp.uint8)

  y, mean, var, ws = lax.platform_dependent(
      x, scale, bias, cpu=lambda *a: _onednn_forward(*a, epsilon, relu), default=xla)
  return (y, mean, var), (x, scale, bias, mean, var, ws)


def _backward(epsilon, relu, residuals, cotangents):
  x, scale, bias, mean, var, ws = residuals
  dy = cotangents[0]  # mean and var leave batch_norm without gradient.

  def onednn(x, scale, mean, var, ws, dy, bias):
    del bias
    c = x.shape[-1]
    out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((c,), x.dtype),
           jax.ShapeDtypeStruct((c,), x.dtype))
    return jax.ffi.ffi_call('onednn_norm_backward', out, vmap_method='sequential')(
        x, scale, mean, var, ws, dy, epsilon=np.float32(epsilon), relu=relu)

  def xla(x, scale, mean, var, ws, dy, bias):
    del mean, var, ws
    f = lambda x, scale, bias: reference(x, scale, bias, epsilon, relu)[0]
    return jax.vjp(f, x, scale, bias)[1](dy)

  return lax.platform_dependent(x, scale, mean, var, ws, dy, bias, cpu=onednn, default=xla)


_batch_norm.defvjp(_forward, _backward)


def _shapes(x, *like):
  """Result shapes: x's for each array in `like` named 'x', one per channel for 'c'."""
  c = x.shape[-1]
  return tuple(jax.ShapeDtypeStruct(x.shape if k == 'x' else (c,), x.dtype) for k in like)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _norm_add_relu(x, scale, bias, residual, epsilon):
  return _add_forward(x, scale, bias, residual, epsilon)[0]


def _add_forward(x, scale, bias, residual, epsilon):
  def native(x, scale, bias, residual):
    return jax.ffi.ffi_call('norm_add_relu_forward', _shapes(x, 'x', 'c', 'c'),
                            vmap_method='sequential')(x, scale, bias, residual,
                                                      epsilon=np.float32(epsilon))

  def xla(x, scale, bias, residual):
    return reference(x, scale, bias, epsilon, True, residual)

  out, mean, var = lax.platform_dependent(x, scale, bias, residual, cpu=native,
                                          default=xla)
  # The gradient reads the output (where it is positive the ReLU passed), not a mask.
  return (out, mean, var), (x, scale, bias, mean, var, out)


def _add_backward(epsilon, residuals, cotangents):
  x, scale, bias, mean, var, out = residuals
  dout = cotangents[0]

  def native(x, scale, mean, var, out, dout, bias):
    del bias
    return jax.ffi.ffi_call('norm_add_relu_backward', _shapes(x, 'x', 'c', 'c', 'x'),
                            vmap_method='sequential')(x, scale, mean, var, out, dout,
                                                      epsilon=np.float32(epsilon))

  def xla(x, scale, mean, var, out, dout, bias):
    del mean, var
    g = jnp.where(out > 0, dout, jnp.zeros_like(dout))  # Through the ReLU: the shortcut's.
    f = lambda x, scale, bias: reference(x, scale, bias, epsilon, False)[0]
    return (*jax.vjp(f, x, scale, bias)[1](g), g)

  return lax.platform_dependent(x, scale, mean, var, out, dout, bias, cpu=native,
                                default=xla)


_norm_add_relu.defvjp(_add_forward, _add_backward)


class BatchNorm(nn.BatchNorm):
  """Flax's BatchNorm (the same fields, variables and results to float32 rounding) whose
  training pass on float32 NHWC activations is `batch_norm`; `relu=True` returns
  relu(BatchNorm(x)) from the one fused call, and with `residual` (an array of x's shape)
  relu(BatchNorm(x) + residual) from `batch_norm_add_relu`. Anything else (the running
  averages in evaluation, other dtypes, axes or reductions across devices) is Flax's
  own, with the addition and ReLU after it."""

  fuses_relu = True

  @nn.compact
  def __call__(self, x, use_running_average=None, *, mask=None, relu: bool = False,
               residual=None):
    running = nn.merge_param('use_running_average', self.use_running_average,
                             use_running_average)
    if not (not running and mask is None and x.ndim == 4
            and self.axis in (-1, 3) and self.axis_name is None and self.use_bias
            and self.use_scale and x.dtype == jnp.float32
            and self.dtype in (None, jnp.float32) and self.param_dtype == jnp.float32):
      y = super().__call__(x, use_running_average, mask=mask)
      y = y if residual is None else y + residual
      return nn.relu(y) if relu else y
    c = x.shape[-1]
    scale = self.param('scale', self.scale_init, (c,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (c,), self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    if (relu and residual is not None and residual.shape == x.shape
        and residual.dtype == x.dtype):
      y, mean, var = batch_norm_add_relu(x, scale, bias, residual, self.epsilon)
    elif residual is not None:
      y, mean, var = batch_norm(x, scale, bias, self.epsilon)
      y = nn.relu(y + residual) if relu else y + residual
    else:
      y, mean, var = batch_norm(x, scale, bias, self.epsilon, relu)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def fuses_relu(norm) -> bool:
  """Whether the norm layers `norm` builds (a class, or a functools.partial of one) take
  `relu=True` and `residual`."""
  return getattr(getattr(norm, 'func', norm), 'fuses_relu', False)
