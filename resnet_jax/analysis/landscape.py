"""Loss landscapes (Li et al. 2018): a trained net's loss and accuracy on fixed training
images at theta* + a*d1 + b*d2, with d1, d2 random directions normalised filter by filter,
along one direction, and on the straight line from the initial to the trained weights;
and profiles: the loss at a few distances along several other random directions, whose
statistics say what holds across directions, which one or two pictured ones cannot.

One compiled program evaluates every point (the coordinates are its input); a run saves
each batch of points as it comes, so that a killed run goes on where it stopped.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import run_dir
from resnet_jax.models import resnet
from resnet_jax.analysis import probe as probe_lib
from resnet_jax.analysis import why_results

KINDS = ('2d', '1d', 'line')
# Where the profiles look: fractions of a filter-normalised direction's length (the
# landscapes' span), in units where 1 moves every filter by its own norm.
PROFILE_DISTANCES = (0.25, 0.5, 1.0)


def filter_normalize(direction, params):
  """`direction` with each output filter rescaled to the norm of the same filter of
  `params` (a filter: all but the last axis of one conv or dense kernel, per block of a
  scanned stage), and its 1-D parts (BatchNorm scales and offsets, biases) zero."""
  def one(path, d, w):
    lead = 1 if resnet.in_scanned_stage(path) else 0
    if d.ndim - lead <= 1:
      return jnp.zeros_like(d)
    axes = tuple(range(lead, d.ndim - 1))
    norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
    return d * norm(w) / (norm(d) + 1e-10)
  return jax.tree_util.tree_map_with_path(one, direction, params)


def random_direction(rng, params):
  """A Gaussian direction in parameter space, filter-normalised to `params`."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(rng, len(leaves))
  d = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return filter_normalize(jax.tree_util.tree_unflatten(treedef, d), params)


def coordinates(kind: str, resolution: int, span: float = 1.0) -> np.ndarray:
  """The points of a landscape, (n, 2): (a, b) on the 2-D grid over [-span, span]^2 (b
  fastest), (a, 0) along one direction, both with the trained net at their centre; (t,
  0) along the line from the initial (t=0) to the trained (t=1) net, both of them
  points, and a sixth of the points past either end."""
  if kind not in KINDS:
    raise ValueError(f'Unknown landscape kind {kind!r}: use one of {", ".join(KINDS)}.')
  if kind == 'line':
    if resolution < 2:
      raise ValueError(f'The line from the initial to the trained weights needs at least '
                       f'2 points (landscape_line_points), got {resolution}.')
    past = (resolution - 1) // 6
    t = (np.arange(resolution) - past) / (resolution - 1 - 2 * past)
    return np.stack([t, np.zeros(resolution)], 1)
  if resolution < 3 or resolution % 2 == 0:
    key = 'landscape_resolution' if kind == '2d' else 'landscape_line_points'
    raise ValueError(f'A {kind} landscape needs an odd number of points, at least 3, so '
                     f'that the trained weights are one ({key}), got {resolution}.')
  axis = np.linspace(-span, span, resolution)
  if kind == '1d':
    return np.stack([axis, np.zeros(resolution)], 1)
  a, b = np.meshgrid(axis, axis, indexing='ij')
  return np.stack([a.ravel(), b.ravel()], 1)


def evaluator(model, points_per_call: int, compiler_options=None):
  """A jitted (params, d1, d2, coords (points_per_call, 2), batch_stats, chunks) ->
  (losses, accuracies) at params + a*d1 + b*d2 for each (a, b) of coords: one program
  for every landscape of a net; several points a call are vmapped."""
  def at(params, d1, d2, ab, batch_stats, chunks):
    moved = jax.tree_util.tree_map(lambda w, x, y: w + ab[0] * x + ab[1] * y,
                                   params, d1, d2)
    return probe_lib.loss_and_accuracy(model, moved, batch_stats, chunks)

  def points(params, d1, d2, coords, batch_stats, chunks):
    if points_per_call == 1:
      loss, acc = at(params, d1, d2, coords[0], batch_stats, chunks)
      return loss[None], acc[None]
    return jax.vmap(at, in_axes=(None, None, None, 0, None, None))(
        params, d1, d2, coords, batch_stats, chunks)
  return jax.jit(points, compiler_options=compiler_options)


def compute(path: str, kind: str, settings: dict, evaluate, params, d1, d2, batch_stats,
            chunks, points_per_call: int, label: str = '', every_s: float = 15.0) -> dict:
  """The landscape `kind` at `path` (JSON: settings, coords, loss, accuracy), computing
  the points it lacks `points_per_call` at a time and saving after each call; a saved
  landscape of other settings is computed anew. Prints progress with an ETA."""
  from resnet_jax.durations import format_duration
  coords = coordinates(kind, settings['resolution'], settings.get('span', 1.0))
  out = why_results.load(path, settings)
  if out is None:
    out = {'kind': kind, 'settings': settings, 'coords': coords.tolist(),
           'loss': [None] * len(coords), 'accuracy': [None] * len(coords)}
  todo = [i for i, v in enumerate(out['loss']) if v is None]
  if not todo:
    return out
  total, done_before = len(coords), len(coords) - len(todo)
  if done_before:
    print(f'{label}{kind} landscape: {done_before}/{total} points saved, computing the '
          f'other {len(todo)}.', flush=True)
  start = last_print = time.perf_counter()
  for n, first in enumerate(range(0, len(todo), points_per_call)):
    idx = todo[first:first + points_per_call]
    ab = coords[idx + [idx[-1]] * (points_per_call - len(idx))]  # Padded: one program.
    if kind == 'line':
      ab = ab - [1.0, 0.0]  # a = t - 1 along theta* - theta0 (`directions`).
    loss, acc = evaluate(params, d1, d2, jnp.asarray(ab, jnp.float32), batch_stats, chunks)
    loss, acc = np.asarray(loss), np.asarray(acc)
    for j, i in enumerate(idx):
      out['loss'][i] = float(loss[j]) if np.isfinite(loss[j]) else float('inf')
      out['accuracy'][i] = float(acc[j])
    run_dir.write_text(path, json.dumps(out))
    now, done = time.perf_counter(), first + len(idx)
    if now - last_print >= every_s or done == len(todo):
      rate = (now - start) / done
      print(f'{label}{kind} landscape: {done_before + done}/{total} points '
            f'({rate:.2f} s a point), ETA {format_duration(rate * (len(todo) - done))}',
            flush=True)
      last_print = now
  return out


def directions(kind: str, rng, params, init_params):
  """(d1, d2) of a landscape: two random filter-normalised directions (the 1-D slice
  takes the first, so that it is the 2-D grid's b = 0 row), or theta* - theta0 for the
  line (whose coordinate a = t - 1 then gives theta0 + t (theta* - theta0))."""
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  if kind == 'line':
    d1, d2 = jax.tree_util.tree_map(lambda w, w0: w - w0, params, init_params), zero
  else:
    k1, k2 = jax.random.split(rng)
    d1 = random_direction(k1, params)
    d2 = random_direction(k2, params) if kind == '2d' else zero
  # Placed as the parameters are, so that every landscape runs the one compiled program.
  where = jax.tree_util.tree_map(lambda a: a.sharding, params)
  return jax.device_put(d1, where), jax.device_put(d2, where)


def compute_profiles(path: str, settings: dict, evaluate, params, batch_stats, chunks,
                     points_per_call: int, label: str = '') -> dict:
  """The loss at settings['distances'] along settings['directions'] random
  filter-normalised directions, each drawn from the seed and its index (none of them
  the landscapes' own), at `path` (JSON: settings, loss direction by direction, each
  distance in turn); saved after each direction, so that a killed run goes on."""
  distances, n = settings['distances'], settings['directions']
  out = why_results.load(path, settings) or {
      'kind': 'profiles', 'settings': settings, 'loss': [None] * (n * len(distances))}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  where = jax.tree_util.tree_map(lambda a: a.sharding, params)
  start = time.perf_counter()
  for k in range(n):
    part = slice(k * len(distances), (k + 1) * len(distances))
    if None not in out['loss'][part]:
      continue
    key = jax.random.fold_in(jax.random.PRNGKey(settings['seed']), 1 + k)
    d = jax.device_put(random_direction(key, params), where)
    losses = []
    for first in range(0, len(distances), points_per_call):
      ts = list(distances[first:first + points_per_call])
      ab = [[t, 0.0] for t in ts + ts[-1:] * (points_per_call - len(ts))]  # Padded.
      loss, _ = evaluate(params, d, zero, jnp.asarray(ab, jnp.float32), batch_stats, chunks)
      losses += [float(x) if np.isfinite(x) else float('inf')
                 for x in np.asarray(loss)[:len(ts)]]
    out['loss'][part] = losses
    run_dir.write_text(path, json.dumps(out))
  medians = np.median(np.reshape(out['loss'], (n, len(distances))), axis=0)
  print(f'{label}profiles along {n} directions: median loss '
        + ', '.join(f'{m:.3g} at {t:g}' for m, t in zip(medians, distances))
        + f' ({time.perf_counter() - start:.0f} s)', flush=True)
  return out
