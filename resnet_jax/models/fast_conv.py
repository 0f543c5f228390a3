"""A drop-in `conv_general_dilated` whose gradients are fast on XLA:CPU.

XLA:CPU computes a convolution's weight gradient several times slower than its
forward pass, and both gradients far slower still inside a loop (`nn.scan`).
Here both are written as ordinary forward convolutions, which XLA runs fast in
loops too: the input gradient with the flipped kernel, and the weight gradient of
a stride-1 convolution with batch and channels swapped (the input's channels as
the batch, the output gradient as the kernel), over chunks of the batch. Strided
weight gradients, which that form makes slower, are im2col matmuls over chunks of
the batch inside `lax.scan` (the chunking keeps each matmul in cache). All equal
XLA's results up to float32 rounding. Only the CPU lowering takes these paths
(`lax.platform_dependent`): GPU and TPU keep XLA's own kernels.
"""

import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Output positions per chunk: about 8 CIFAR images, small enough to stay in cache.
_ROWS_PER_CHUNK = 8192
# The swapped weight gradient's chunks: at most 32 images and 2**18 input floats
# (1 MiB) each, up to 8 unrolled per loop step (measured on 2 AVX-512 cores).
_SWAPPED_MAX_IMAGES, _SWAPPED_FLOATS, _SWAPPED_UNROLL = 32, 2**18, 8


def xla_conv(x, w, strides, pads):
  """XLA's own NHWC/HWIO convolution."""
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _largest_divisor(n, at_most):
  """The largest divisor of `n` that is at most `at_most` (and at least 1)."""
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, at_most))


def _chunk_size(n, positions):
  """Largest divisor of the batch `n` whose chunk has at most _ROWS_PER_CHUNK rows."""
  return _largest_divisor(n, _ROWS_PER_CHUNK // max(positions, 1))


def _swapped_chunk_size(n, positions_x_channels):
  """Images per chunk: at most _SWAPPED_MAX_IMAGES and about 1 MiB of float32 input."""
  return _largest_divisor(
      n, min(_SWAPPED_MAX_IMAGES, _SWAPPED_FLOATS // max(positions_x_channels, 1)))


def _sum_over_chunks(chunk, xs, gs, unroll):
  """Sum of `chunk(xs[i], gs[i])` over the leading axis: `unroll` chunks per step of a
  `lax.scan` (unrolled, so that they can run side by side), or no loop where one
  step covers them all."""
  k = xs.shape[0]
  inner = _largest_divisor(k, unroll)

  def group(xg, gg):
    return functools.reduce(operator.add, [chunk(xg[i], gg[i]) for i in range(inner)])

  if k == inner:
    return group(xs, gs)
  shape = (k // inner, inner)
  xs, gs = xs.reshape(shape + xs.shape[1:]), gs.reshape(shape + gs.shape[1:])
  first = jax.eval_shape(group, xs[0], gs[0])
  total, _ = lax.scan(lambda acc, xg: (acc + group(*xg), None),
                      jnp.zeros(first.shape, first.dtype), (xs, gs))
  return total


def im2col_weight_grad(x, g, kernel_shape, strides, pads):
  """dL/dW of an NHWC/HWIO convolution, as chunked im2col matmuls."""
  kh, kw, ci, co = kernel_shape
  n, ho, wo = g.shape[0], g.shape[1], g.shape[2]
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  b = _chunk_size(n, ho * wo)

  def chunk(xb, gb):
    taps = [
        lax.slice(xb, (0, i, j, 0),
                  (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, ci),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    cols = jnp.concatenate(taps, axis=-1).reshape(b * ho * wo, kh * kw * ci)
    return lax.dot(cols.T, gb, preferred_element_type=jnp.float32)

  dw = _sum_over_chunks(chunk, xp.reshape((n // b, b) + xp.shape[1:]),
                        g.reshape(n // b, b * ho * wo, co), unroll=1)
  return dw.reshape(kernel_shape)


def swapped_weight_grad(x, g, kernel_shape, pads):
  """dL/dW of a stride-1 NHWC/HWIO convolution, as forward convolutions.

  The input with its channels as the batch and its batch as the features, padded
  as the forward pass pads it and convolved with the output gradient as the kernel
  (batch in, channels out), gives the weight gradient with its input channels first.
  Done over chunks of the batch and summed: up to 8 independent chunks at a time,
  which XLA:CPU runs 1.3-2x as fast as one convolution over the whole batch.
  """
  n, h, w, ci = x.shape
  b = _swapped_chunk_size(n, h * w * ci)

  def chunk(xb, gb):
    dw = lax.conv_general_dilated(xb.transpose(3, 1, 2, 0), gb.transpose(1, 2, 0, 3),
                                  (1, 1), pads, dimension_numbers=_NHWC,
                                  preferred_element_type=jnp.float32)
    assert dw.shape[1:3] == tuple(kernel_shape[:2]), (dw.shape, kernel_shape)
    return dw

  dw = _sum_over_chunks(chunk, x.reshape((n // b, b) + x.shape[1:]),
                        g.reshape((n // b, b) + g.shape[1:]), unroll=_SWAPPED_UNROLL)
  return dw.transpose(1, 2, 0, 3)


def weight_grad(x, g, kernel_shape, strides, pads):
  """dL/dW of an NHWC/HWIO convolution by the faster of the two forms for its stride."""
  if tuple(strides) == (1, 1):
    return swapped_weight_grad(x, g, kernel_shape, pads)
  return im2col_weight_grad(x, g, kernel_shape, strides, pads)


def input_grad(g, w, strides, pads, in_hw):
  """dL/dx of an NHWC/HWIO convolution, as a forward convolution of `g`."""
  flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  padding = []
  for d, (lo, hi) in enumerate(pads):
    k, s = w.shape[d], strides[d]
    rest = (in_hw[d] + lo + hi - k) % s  # Input rows the strided forward never reached.
    padding.append((k - 1 - lo, k - 1 - hi + rest))
  return lax.conv_general_dilated(g, flipped, (1, 1), padding, lhs_dilation=strides,
                                  dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return xla_conv(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return xla_conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, g):
  x, w = res

  def xla_dgrad(g, w):
    _, vjp = jax.vjp(lambda x_: xla_conv(x_, w, strides, pads), x)
    return vjp(g)[0]

  def cpu_dgrad(g, w):
    return input_grad(g, w, strides, pads, x.shape[1:3])

  def xla_wgrad(x, g):
    _, vjp = jax.vjp(lambda w_: xla_conv(x, w_, strides, pads), w)
    return vjp(g)[0]

  def cpu_wgrad(x, g):
    return weight_grad(x, g, w.shape, strides, pads).astype(w.dtype)

  dx = lax.platform_dependent(g, w, cpu=cpu_dgrad, default=xla_dgrad)
  dw = lax.platform_dependent(x, g, cpu=cpu_wgrad, default=xla_wgrad)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, precision, kwargs) -> bool:
  """Whether a convolution is a plain 2D NHWC/HWIO one, without dilation or groups."""
  return (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
          and not kwargs and precision is None
          and all(d == 1 for d in (lhs_dilation or (1, 1)))
          and all(d == 1 for d in (rhs_dilation or (1, 1)))
          and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def strides_and_pads(lhs, rhs, window_strides, padding):
  """The strides and the (low, high) padding of each spatial axis, as Python ints."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return (tuple(int(s) for s in window_strides),
          tuple(tuple(int(v) for v in p) for p in padding))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` with the fast CPU weight gradient where it applies.

  Plain 2D NHWC/HWIO convolutions without dilation or groups (every convolution
  of the models here) take the fast path; anything else goes to XLA unchanged.
  """
  if not simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count, precision, kwargs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  strides, pads = strides_and_pads(lhs, rhs, window_strides, padding)
  return _conv(lhs, rhs, strides, pads)
