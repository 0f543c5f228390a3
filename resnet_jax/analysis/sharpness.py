"""Sharpness: the top eigenvalue of the loss Hessian at the trained weights, by power
iteration on Hessian-vector products (forward-over-reverse), on fixed training images
with BatchNorm in inference mode."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from resnet_jax.analysis import probe as probe_lib


def power_iteration(matvec, v0, iterations: int, tol: float = 1e-3) -> dict:
  """The eigenvalue of largest magnitude of the symmetric operator `matvec` (on flat
  vectors), from `v0`: the Rayleigh quotient after each step, stopping once it changes
  by less than `tol` relative, or after `iterations` steps."""
  v = v0 / jnp.linalg.norm(v0)
  history = []
  for _ in range(iterations):
    hv = matvec(v)
    history.append(float(jnp.vdot(v, hv)))
    norm = jnp.linalg.norm(hv)
    if not np.isfinite(float(norm)) or float(norm) == 0.0:
      break
    v = hv / norm
    if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
      break
  return {'eigenvalue': history[-1], 'iterations': len(history), 'history': history}


def hvp_fn(model, params, compiler_options=None):
  """A jitted (flat params, flat vector, batch_stats, chunks) -> the Hessian of the mean
  cross-entropy times the vector, and the flat params (placed as `params` are, so that
  the vectors are too: one program, which cells of one architecture share through the
  persistent compilation cache). Forward mode differentiates the gradient,
  fast_conv's custom one included (on CPU a ResNet-20's product runs 9x faster through
  it than through XLA's own convolution gradients). oneDNN's convolutions have no
  forward-mode derivative, so a model on them takes fast_conv here (the same function)."""
  flat, unravel = ravel_pytree(params)
  if getattr(model, 'conv_impl', None) == 'onednn':
    model = model.clone(conv_impl='fast')

  def loss(p, batch_stats, chunks):
    return probe_lib.loss_and_accuracy(model, unravel(p), batch_stats, chunks)[0]

  def hvp(p, v, batch_stats, chunks):
    return jax.jvp(lambda q: jax.grad(loss)(q, batch_stats, chunks), (p,), (v,))[1]
  return jax.jit(hvp, compiler_options=compiler_options), flat


def top_eigenvalue(model, params, batch_stats, chunks, iterations: int, seed: int = 0,
                   tol: float = 1e-3, compiler_options=None) -> dict:
  """`power_iteration` on the loss Hessian of `model` at `params` over `chunks`."""
  hvp, flat = hvp_fn(model, params, compiler_options)
  v0 = jax.device_put(jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype),
                      flat.sharding)
  return power_iteration(lambda v: hvp(flat, v, batch_stats, chunks), v0, iterations, tol)
