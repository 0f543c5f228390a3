"""The built extension (`_onednn.so`): loading it, registering its XLA FFI handlers, and
the OpenMP threads it runs on.

`load_error()` is None once the library is loaded and every handler registered for the
CPU (the convolutions' of onednn_conv.cc as `onednn_conv_*`, BatchNorm's of
onednn_norm.cc as `onednn_norm_*`, BatchNorm + addition + ReLU of norm_add_relu.cc as
`norm_add_relu_*`), else one sentence saying why not;
`resnet_jax/models/onednn_conv.py` and `onednn_norm.py` call the handlers, and
`trainer.conv_impl` falls back to `fast_conv` and Flax's BatchNorm where it is not None.
"""

import ctypes
import functools
import os

import jax

LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_onednn.so')
HANDLERS = {'onednn_conv_forward': 'OnednnConvForward',
            'onednn_conv_input_grad': 'OnednnConvInputGrad',
            'onednn_conv_weight_grad': 'OnednnConvWeightGrad',
            'onednn_norm_forward': 'OnednnNormForward',
            'onednn_norm_backward': 'OnednnNormBackward',
            'norm_add_relu_forward': 'NormAddReluForward',
            'norm_add_relu_backward': 'NormAddReluBackward'}


@functools.cache
def _loaded(library: str):
  return ctypes.cdll.LoadLibrary(library)


@functools.cache
def load_error(library: str = LIBRARY) -> str | None:
  """None once the extension is loaded and its calls registered, else why it is not."""
  if not os.path.exists(library):
    return (f'{library} is not built (`python -m resnet_jax.native.build` builds it; '
            '`make setup` runs that)')
  try:
    loaded = _loaded(library)
  except OSError as e:
    return f'{library} does not load ({e})'
  try:
    handlers = {target: jax.ffi.pycapsule(getattr(loaded, symbol))
                for target, symbol in HANDLERS.items()}
  except AttributeError as e:  # A stale build, from before a handler was added.
    return (f'{library} lacks a handler ({e}); rebuild it with '
            '`python -m resnet_jax.native.build`')
  for target, handler in handlers.items():
    try:
      jax.ffi.register_ffi_target(target, handler, platform='cpu')
    # XLA refusing a handler (its FFI API version, say) raises what it likes.
    except Exception as e:  # pylint: disable=broad-except
      return (f'XLA does not take its handlers ({type(e).__name__}: {e}); rebuild it with '
              '`python -m resnet_jax.native.build` against this jaxlib')
  return None


def available() -> bool:
  return load_error() is None


def library():
  """The loaded extension, for its plain C functions (ctypes); it must be available()."""
  return _loaded(LIBRARY)


def check(impl: str) -> None:
  """Raises, in one sentence, where a model built with `impl`='onednn' cannot run here."""
  why = load_error()  # Registers the handlers on first use (cached).
  if why:
    raise RuntimeError(f'model.conv_impl=\'{impl}\' cannot run here: {why}.')


def threads() -> int:
  """The OpenMP threads oneDNN (and norm_add_relu.cc) runs on in this process: OMP_NUM_THREADS (its first value)
  where set, else every core this process may use (GNU OpenMP's default). Its weight
  gradients sum in an order that depends on it (docs/ablation.md)."""
  value = os.environ.get('OMP_NUM_THREADS', '').split(',')[0].strip()
  if value.isdigit() and int(value) > 0:
    return int(value)
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count()
