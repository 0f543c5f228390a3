"""Tailored Activation Transformation (Zhang, Botev & Martens 2022) for plain nets.

The leaky ReLU's negative slope and output scale come from DeepMind's `dks` package
(its JAX-free solver, dks.base): chosen so that the C map of the whole net (a chain of
`num_layers` activations) sends 0 to `c_val_0_target` (0.9, the package's default), and
each layer keeps q = 1. The kernels start delta-orthogonal: a scaled orthogonal matrix at
the centre of each filter and zeros elsewhere, so that at initialisation each
convolution is an orthogonal map of every location (the paper's SUO distribution).
dks' own JAX sampler (dks.jax) cannot be imported with current JAX (it reads the removed
`jax.config` module), so that distribution is sampled here, as the DKS paper defines it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

C_VAL_0_TARGET = 0.9


@functools.lru_cache(maxsize=None)
def leaky_relu_params(num_layers: int, c_val_0_target: float = C_VAL_0_TARGET):
  """(negative_slope, output_scale) of TAT's leaky ReLU for a chain of `num_layers`
  activations; the activation is output_scale * leaky_relu(x, negative_slope)."""
  if num_layers < 1:
    raise ValueError(f'TAT needs at least one activation, got {num_layers}.')
  from dks.base import activation_transform  # pylint: disable=import-outside-toplevel

  def subnet_max(c, local_c_map):
    for _ in range(num_layers):
      c = local_c_map(c)
    return c

  # The solver returns the transformed function, output_scale * phi(x, negative_slope);
  # evaluated at +-1 with phi a float64 leaky ReLU it gives back its two numbers.
  phi = lambda x, negative_slope: x if x > 0 else negative_slope * x
  try:
    fn = activation_transform.get_transformed_activations(
        ['leaky_relu'], method='TAT', tat_params={'c_val_0_target': c_val_0_target},
        subnet_max_func=subnet_max, activation_getter=lambda name: phi)['leaky_relu']
  except ValueError:  # dks' solver found no slope: the chain is too short.
    raise ValueError(
        f'TAT cannot make a plain net of {num_layers} activations nonlinear enough for '
        f'its C map to send 0 to {c_val_0_target}: use a deeper net (depth 20 or more) '
        f'or model.activation "relu".') from None
  scale = fn(1.0)
  return -fn(-1.0) / scale, scale


def activation(num_layers: int, c_val_0_target: float = C_VAL_0_TARGET):
  """TAT's transformed leaky ReLU for a plain net of `num_layers` activations."""
  slope, scale = leaky_relu_params(num_layers, c_val_0_target)
  return lambda x: scale * jax.nn.leaky_relu(x, slope)


def delta_orthogonal(key, shape, dtype=jnp.float32):
  """A kernel (H, W, in, out) or dense (in, out) of the SUO distribution: an orthogonal
  (in, out) matrix scaled by max(sqrt(out / in), 1), at the filter's centre."""
  in_dim, out_dim = shape[-2], shape[-1]
  if any(s % 2 == 0 for s in shape[:-2]):
    raise ValueError(f'A delta-orthogonal kernel needs odd spatial sizes, got {shape}.')
  rows, cols = max(in_dim, out_dim), min(in_dim, out_dim)
  q, r = jnp.linalg.qr(jax.random.normal(key, (rows, cols), jnp.float32))
  q = q * jnp.sign(jnp.diag(r))
  matrix = q if in_dim >= out_dim else q.T
  matrix = matrix * max(np.sqrt(out_dim / in_dim), 1.0)
  centre = tuple((s - 1) // 2 for s in shape[:-2])
  return jnp.zeros(shape, dtype).at[centre].set(matrix.astype(dtype))
