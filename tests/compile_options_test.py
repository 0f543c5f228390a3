"""cpu_convolutions='eigen' moves convolutions off YNNPACK and computes the same values."""

import jax
from jax import lax
import numpy as np
import pytest

from resnet_jax import compile_options
from resnet_jax import config_lib


def conv_and_grads(x, w):
  f = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, vjp = jax.vjp(f, x, w)
  return (y,) + vjp(y)


def test_eigen_option_keeps_convolutions_off_ynnpack_with_equal_values():
  options = compile_options.for_jit('eigen')
  assert options is not None, 'this jaxlib should take the option'
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 8)) / 8.5
  eigen = jax.jit(conv_and_grads, compiler_options=options).lower(x, w).compile()
  default = jax.jit(conv_and_grads).lower(x, w).compile()
  assert '__ynn_fusion' not in eigen.as_text()  # Every convolution is XLA's own.
  assert eigen.as_text().count('convolution(') == 3
  for a, b in zip(eigen(x, w), default(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(abs(b).max()))
  assert compile_options.for_jit('default') is None


def test_unknown_value_is_named():
  with pytest.raises(ValueError, match="Unknown cpu_convolutions 'ynn'"):
    compile_options.for_jit('ynn')
  config = config_lib.base_config()
  config.cpu_convolutions = 'ynn'
  with pytest.raises(config_lib.ConfigError, match="Unknown cpu_convolutions 'ynn'"):
    config_lib.validate(config)


def test_run_once_options_compile_with_few_optimisations_and_equal_values():
  options = compile_options.run_once(compile_options.for_jit('eigen'))
  assert options['xla_backend_optimization_level'] == 0
  assert options['xla_cpu_experimental_ynn_fusion_type']  # The run's own options kept.
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 8)) / 8.5
  quick = jax.jit(conv_and_grads, compiler_options=options)(x, w)
  for a, b in zip(quick, jax.jit(conv_and_grads)(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(abs(b).max()))
  assert compile_options.run_once(None) == {'xla_backend_optimization_level': 0,
                                            'xla_llvm_disable_expensive_passes': True}
