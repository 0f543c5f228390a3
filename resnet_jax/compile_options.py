"""XLA compiler options for the jitted steps: which kernels run convolutions on CPU.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK by default. On 2 AVX2 cores
XLA's own Eigen kernels run the same layers about twice as fast (the lesson's
train step: 135 ms against 257 ms; on 2 AVX-512 cores ResNet-56's step is 1.1x
faster), so `cpu_convolutions='eigen'` (the default) keeps them there through a
per-jit compiler option; YNNPACK keeps its matmuls and reductions. GPU and TPU
compilations get no options. JAX is imported where it is used: `check` runs in the
sweep's driver, which does not import it.
"""

import functools
import logging

CPU_CONVOLUTIONS = ('eigen', 'default')
_YNN_FUSIONS = 'xla_cpu_experimental_ynn_fusion_type'
# jaxlib 0.10's default list minus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
_YNN_WITHOUT_CONVOLUTIONS = 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'


def check(cpu_convolutions: str) -> None:
  if cpu_convolutions not in CPU_CONVOLUTIONS:
    raise ValueError(f'Unknown cpu_convolutions {cpu_convolutions!r}: use one of '
                     f'{", ".join(CPU_CONVOLUTIONS)}.')


def for_jit(cpu_convolutions: str = 'eigen') -> dict | None:
  """The `compiler_options` for `jax.jit` on the default backend (None: XLA's defaults)."""
  import jax
  check(cpu_convolutions)
  if cpu_convolutions == 'default' or jax.default_backend() != 'cpu':
    return None
  return _eigen_convolutions()


def for_config(config) -> dict | None:
  """`for_jit` of a run's config."""
  return for_jit(config.cpu_convolutions)


def run_once(options: dict | None) -> dict:
  """`options` plus the fewest XLA optimisations (those of jax_disable_most_optimizations,
  for one jit): for programs that run once or twice, such as a model's initialisation,
  whose compile time outweighs their run time."""
  return {**(options or {}), 'xla_backend_optimization_level': 0,
          'xla_llvm_disable_expensive_passes': True}


@functools.cache
def _eigen_convolutions() -> dict | None:
  """The option that keeps convolutions on Eigen, if this jaxlib knows it."""
  import jax
  options = {_YNN_FUSIONS: _YNN_WITHOUT_CONVOLUTIONS}
  try:
    jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
  except jax.errors.JaxRuntimeError as e:  # Another jaxlib: its own defaults.
    logging.warning('This jaxlib does not take %s (%s): XLA:CPU picks its own '
                    'convolution kernels.', _YNN_FUSIONS, str(e).splitlines()[0])
    return None
  return options
