"""Convolutions on oneDNN from the train step (CPU): forward pass and both gradients.

The native extension (`resnet_jax/native/onednn_conv.cc`, built at set-up by
`python -m resnet_jax.native.build`) hands XLA:CPU's buffers to oneDNN, the library
PyTorch and TensorFlow run their CPU convolutions on, which computes these layers'
gradients about twice as fast as XLA's kernels (docs/performance.md). `conv` is a
`jax.custom_vjp` over three `jax.ffi` calls, for float32 NHWC/HWIO convolutions
without dilation or groups; `extension.available()` says whether the extension loaded,
and the model falls back to `fast_conv` where it did not (`trainer.conv_impl`).

It has no forward-mode derivative: `jax.jvp` of it (forward-over-reverse Hessian-vector
products among them) fails in one sentence naming `model.conv_impl='fast'`, which the
sharpness analysis takes.
"""

import functools

import jax
from jax import lax
import numpy as np

from resnet_jax.models import fast_conv
from resnet_jax.native import extension


def _call(kind, out_shape, a, b, strides, pads):
  extension.check('onednn')
  attrs = dict(stride_h=strides[0], stride_w=strides[1], pad_low_h=pads[0][0],
               pad_high_h=pads[0][1], pad_low_w=pads[1][0], pad_high_w=pads[1][1])
  return jax.ffi.ffi_call(f'onednn_conv_{kind}', jax.ShapeDtypeStruct(out_shape, a.dtype),
                          vmap_method='sequential')(
                              a, b, **{k: np.int64(v) for k, v in attrs.items()})


def _out_shape(x_shape, w_shape, strides, pads):
  hw = [(x_shape[1 + d] + pads[d][0] + pads[d][1] - w_shape[d]) // strides[d] + 1
        for d in range(2)]
  return (x_shape[0], *hw, w_shape[3])


class NoForwardModeError(TypeError):
  """jax.jvp of a model whose convolutions run on oneDNN."""


def conv(x, w, strides, pads):
  """An NHWC/HWIO float32 convolution: `strides` (2 ints), `pads` ((lo, hi) per side).
  Only the CPU lowering calls oneDNN (`lax.platform_dependent`); GPU and TPU lower XLA's
  own convolutions and gradients. Reverse mode only."""
  if w.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)) and tuple(strides) != (1, 1):
    # A strided 1x1 convolution (a projection shortcut) reads only every s-th pixel: the
    # same convolution at stride 1 of those pixels. oneDNN 3.2's own strided 1x1 weight
    # gradient (its reduce-to-unit-stride path) gave wrong values here and corrupted the
    # heap (tests/onednn_conv_test.py).
    x, strides = x[:, ::strides[0], ::strides[1], :], (1, 1)
  try:
    return _conv(x, w, strides, pads)
  except TypeError as e:  # JAX's refusal of jvp through a custom_vjp (shapes and dtypes
    # were checked by the caller, conv_impls._onednn).
    raise NoForwardModeError(
        "model.conv_impl='onednn' has no forward-mode derivative (jax.jvp, Hessian-vector "
        "products): build the model with model.conv_impl='fast' for them.") from e


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  def onednn(x, w):
    return _call('forward', _out_shape(x.shape, w.shape, strides, pads), x, w, strides, pads)
  return lax.platform_dependent(x, w, cpu=onednn,
                                default=lambda x, w: fast_conv.xla_conv(x, w, strides, pads))


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, g):
  x, w = residuals

  def onednn(x, w, g):
    return (_call('input_grad', x.shape, g, w, strides, pads),
            _call('weight_grad', w.shape, x, g, strides, pads))

  def xla(x, w, g):
    return jax.vjp(lambda x, w: fast_conv.xla_conv(x, w, strides, pads), x, w)[1](g)

  return lax.platform_dependent(x, w, g, cpu=onednn, default=xla)


_conv.defvjp(_conv_fwd, _conv_bwd)
