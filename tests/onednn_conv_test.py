"""The oneDNN convolutions (resnet_jax/models/onednn_conv.py) against XLA's."""

import ctypes
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax import optim
from resnet_jax import trainer
from resnet_jax.analysis import sharpness
from resnet_jax.models import conv_impls
from resnet_jax.models import onednn_conv
from resnet_jax.native import build
from resnet_jax.native import extension
from resnet_jax.sweep import ablation as ablation_lib

from tests.conftest import REPO

NHWC = ('NHWC', 'HWIO', 'NHWC')
ONEDNN_CACHE_SHAPES = 64  # kCacheShapes in resnet_jax/native/onednn_conv.cc.


@pytest.fixture(autouse=True, scope='module')
def extension_loaded():
  require_extension()


def require_extension():
  """Set-up builds the extension on Linux x86-64: there its absence is a failure, unless
  the machine has no C++ compiler; elsewhere the tests that need it are skipped."""
  if extension.available():
    return
  why = extension.load_error()
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


def test_strided_projections_stay_right_call_after_call():
  """oneDNN 3.2's strided 1x1 weight gradient went wrong from one call to the next (and
  corrupted the heap): projections now run at stride 1 on the strided pixels."""
  for x_shape in ((3, 8, 8, 4), (3, 9, 9, 4)):
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 4, 6))
    want = losses(xla, x, w, (2, 2), ((0, 0), (0, 0)))
    for _ in range(5):
      got = losses(onednn_conv.conv, x, w, (2, 2), ((0, 0), (0, 0)))
      for g, e in zip(got[1], want[1]):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


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
  assert 'resnet_jax.native.build' in extension.load_error.__wrapped__('/nowhere/x.so')
  monkeypatch.setattr(extension, 'available', lambda: False)
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


def _library():
  """The loaded extension (dlopen of the same path returns the loaded library, and with
  it the cache's state)."""
  lib = ctypes.cdll.LoadLibrary(extension.LIBRARY)
  lib.OnednnConvCachedShapes.restype = ctypes.c_int64
  return lib


@pytest.mark.parametrize('library,broken,message', [
    # A stale build: a library without the handlers (here one of Python's own).
    ('python', None, 'lacks a handler'),
    # XLA refusing a handler (an FFI API version it does not support).
    (extension.LIBRARY, 'register', 'XLA does not take its handlers (ValueError: '),
])
def test_every_load_failure_is_a_reason_not_a_crash(library, broken, message, monkeypatch):
  if library == 'python':
    import _ctypes  # pylint: disable=import-outside-toplevel
    library = _ctypes.__file__
  if broken:
    def refuse(*args, **kwargs):
      raise ValueError('Unsupported FFI API version')
    monkeypatch.setattr(jax.ffi, 'register_ffi_target', refuse)
  why = extension.load_error.__wrapped__(library)
  assert message in why and 'resnet_jax.native.build' in why


def test_the_build_splits_cxx_and_names_a_missing_compiler(monkeypatch, tmp_path):
  monkeypatch.setenv('CXX', 'env  g++')  # As `CXX="ccache g++"`: a launcher, then g++.
  cmd, why = build.command()
  assert cmd[:2] == ['env', 'g++'] and not why
  monkeypatch.setenv('CXX', '/no/such/c++ -O1')
  assert build.command() == (None, "the C++ compiler '/no/such/c++' of CXX='/no/such/c++ "
                                   "-O1' is not found")
  before = os.path.getmtime(extension.LIBRARY)
  out = subprocess.run([sys.executable, '-m', 'resnet_jax.native.build'], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, CXX='/no/such/c++'))
  assert out.returncode == 0 and not out.stderr, out.stderr
  assert out.stdout.strip().splitlines() == [
      "The oneDNN extension was not built: the C++ compiler '/no/such/c++' of "
      "CXX='/no/such/c++' is not found. Runs take fast_conv instead."]
  assert os.path.getmtime(extension.LIBRARY) == before  # The built one is kept.


def test_float32_math_stays_strict_whatever_the_environment_says():
  """oneDNN's default math mode comes from ONEDNN_DEFAULT_FPMATH_MODE (BF16 lets float32
  primitives compute in bfloat16 where the CPU has it); every primitive here is strict."""
  code = ('import ctypes, sys; lib = ctypes.cdll.LoadLibrary(sys.argv[1]); '
          'a, b = ctypes.c_int(-1), ctypes.c_int(-1); '
          'assert lib.OnednnConvFpmathModes(ctypes.byref(a), ctypes.byref(b)) == 0; '
          'print(a.value, b.value)')
  for mode, default in (('BF16', '1'), ('ANY', '3'), ('STRICT', '0')):
    out = subprocess.run([sys.executable, '-c', code, extension.LIBRARY],
                         env=dict(os.environ, ONEDNN_DEFAULT_FPMATH_MODE=mode),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [default, '0'], (mode, out.stdout, out.stderr)


@pytest.mark.parametrize('shapes,message', [
    (((2, 6, 6, 3), (3, 3, 3, 4), (2, 6, 6, 5)), "the output's shape is not the convolution's"),
    (((2, 6, 6, 3), (3, 3, 3, 4), (2, 5, 6, 4)), "the output's shape is not the convolution's"),
    (((2, 6, 6, 3), (3, 3, 2, 4), (2, 6, 6, 4)), "the kernel's input channels differ"),
    (((2, 6, 6), (3, 3, 3, 4), (2, 6, 6, 4)), 'must be 4-D'),
    (((2, 1, 1, 3), (5, 5, 3, 4), (2, 1, 1, 4)), 'larger than the padded input'),
])
def test_buffers_that_disagree_are_an_error_not_a_write_out_of_bounds(shapes, message):
  x_shape, w_shape, y_shape = shapes
  call = jax.ffi.ffi_call('onednn_conv_forward', jax.ShapeDtypeStruct(y_shape, jnp.float32))
  attrs = dict(stride_h=1, stride_w=1, pad_low_h=1, pad_high_h=1, pad_low_w=1, pad_high_w=1)
  with pytest.raises(Exception, match=message):
    jax.block_until_ready(call(jnp.ones(x_shape), jnp.ones(w_shape),
                               **{k: np.int64(v) for k, v in attrs.items()}))


def test_the_primitive_cache_is_bounded_and_an_evicted_shape_is_rebuilt():
  lib = _library()
  w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 1))
  fwd = jax.jit(lambda x: onednn_conv.conv(x, w, (1, 1), ((0, 0), (0, 0))))
  first = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 1))
  want = np.asarray(fwd(first))
  for n in range(2, ONEDNN_CACHE_SHAPES + 10):  # Many shapes: batch sizes 2, 3, ...
    fwd(jnp.ones((n, 1, 1, 1)))
    assert lib.OnednnConvCachedShapes() <= ONEDNN_CACHE_SHAPES
  assert lib.OnednnConvCachedShapes() == ONEDNN_CACHE_SHAPES
  np.testing.assert_array_equal(fwd(first), want)  # Its primitives were evicted: rebuilt.


def test_the_default_train_steps_program_calls_onednn():
  """A silent fallback to fast_conv would pass every other test."""
  config = ablation_lib.load_config_file('fashion_mnist.py').get_config('depth=8')
  assert config.model.conv_impl == 'onednn'
  model = trainer.build_model(config, 10)
  tx, schedule = optim.create_optimizer(config.optimizer, 10)
  t = trainer.Trainer(config, model, tx, schedule, (28, 28, 1), np.zeros(1, np.float32),
                      np.ones(1, np.float32), 10)
  state = t.init_state(jax.random.PRNGKey(0))
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, 28, 28, 1), jnp.uint8),
           'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  text = t.train_step.lower(state, batch, jax.random.PRNGKey(1)).compile().as_text()
  for target in ('onednn_conv_forward', 'onednn_conv_input_grad', 'onednn_conv_weight_grad',
                 'onednn_norm_forward', 'onednn_norm_backward'):
    assert f'custom_call_target="{target}"' in text, target


def test_forward_mode_says_to_take_fast_conv():
  m = models.create_model('cifar_resnet', depth=8, num_classes=10, conv_impl='onednn')
  x = jnp.ones((2, 8, 8, 3))
  v = m.init(jax.random.PRNGKey(1), x, train=False)
  f = lambda p: m.apply({**v, 'params': p}, x, train=False)
  with pytest.raises(onednn_conv.NoForwardModeError, match="model.conv_impl='fast'"):
    jax.jvp(f, (v['params'],), (v['params'],))
