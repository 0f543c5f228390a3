"""Convolutions on oneDNN from the train step (CPU): forward pass and both gradients.

The native extension (`resnet_jax/native/onednn_conv.cc`, built at set-up by
`python -m resnet_jax.native.build`) hands XLA:CPU's buffers to oneDNN, the library
PyTorch and TensorFlow run their CPU convolutions on, which computes these layers'
gradients about twice as fast as XLA's kernels (docs/performance.md). `conv` is a
`jax.custom_vjp` over three `jax.ffi` calls, for float32 NHWC/HWIO convolutions
without dilation or groups; `available()` says whether the extension loaded, and the
model falls back to `fast_conv` where it did not (`trainer.conv_impl`).

It has no forward-mode derivative: `jax.jvp` of it (forward-over-reverse Hessian-vector
products among them) fails in one sentence naming `model.conv_impl='fast'`, which the
sharpness analysis takes.
"""

import ctypes
import functools
import os

import jax
from jax import lax
import numpy as np

from resnet_jax.models import fast_conv

LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'native', '_onednn_conv.so')
_TARGETS = {'forward': 'OnednnConvForward', 'input_grad': 'OnednnConvInputGrad',
            'weight_grad': 'OnednnConvWeightGrad'}


@functools.cache
def load_error(library: str = LIBRARY) -> str | None:
  """None once the extension is loaded and its calls registered, else why it is not."""
  if not os.path.exists(library):
    return (f'{library} is not built (`python -m resnet_jax.native.build` builds it; '
            '`make setup` runs that)')
  try:
    loaded = ctypes.cdll.LoadLibrary(library)
  except OSError as e:
    return f'{library} does not load ({e})'
  try:
    handlers = {kind: jax.ffi.pycapsule(getattr(loaded, symbol))
                for kind, symbol in _TARGETS.items()}
  except AttributeError as e:  # A stale build, from before a handler was added.
    return (f'{library} lacks a handler ({e}); rebuild it with '
            '`python -m resnet_jax.native.build`')
  for kind, handler in handlers.items():
    try:
      jax.ffi.register_ffi_target(f'onednn_conv_{kind}', handler, platform='cpu')
    # XLA refusing a handler (its FFI API version, say) raises what it likes.
    except Exception as e:  # pylint: disable=broad-except
      return (f'XLA does not take its handlers ({type(e).__name__}: {e}); rebuild it with '
              '`python -m resnet_jax.native.build` against this jaxlib')
  return None


def available() -> bool:
  return load_error() is None


def threads() -> int:
  """The OpenMP threads oneDNN runs on in this process: OMP_NUM_THREADS (its first value)
  where set, else every core this process may use (GNU OpenMP's default). Its weight
  gradients sum in an order that depends on it (docs/ablation.md)."""
  value = os.environ.get('OMP_NUM_THREADS', '').split(',')[0].strip()
  if value.isdigit() and int(value) > 0:
    return int(value)
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count()


def _call(kind, out_shape, a, b, strides, pads):
  why = load_error()  # Registers the handlers on first use (cached).
  if why:
    raise RuntimeError(f'model.conv_impl=\'onednn\' cannot run here: {why}.')
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
