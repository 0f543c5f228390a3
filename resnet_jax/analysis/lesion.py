"""The lesion study (Veit et al. 2016): a trained net's test error with one shape-keeping
block replaced by the identity, for every such block, and with k random ones deleted."""

import jax
import numpy as np

from resnet_jax.analysis import probe as probe_lib
from resnet_jax.models import resnet


def block_names(model) -> list[str]:
  """'stage1_block1', ... for each block of a ResNet, in network order."""
  return [f'stage{i + 1}_block{j + 1}' for i, size in enumerate(model.stage_sizes)
          for j in range(size)]


def error_fn(model, compiler_options=None):
  """A jitted (keep, params, batch_stats, chunks) -> error with the blocks that `keep`
  zeroes deleted: one program for every deletion."""
  def error(keep, params, batch_stats, chunks):
    return 1.0 - probe_lib.loss_and_accuracy(model, params, batch_stats, chunks, keep)[1]
  return jax.jit(error, compiler_options=compiler_options)


def lesion(model, params, batch_stats, chunks, draws: int, max_deleted: int,
           seed: int = 0, compiler_options=None) -> dict:
  """The error with no block deleted, with each deletable block deleted alone, and with
  k = 1..max_deleted random deletable blocks deleted (`draws` draws of each k)."""
  if not isinstance(model, resnet.ResNet):
    raise ValueError(f'The lesion study deletes ResNet blocks; {type(model).__name__} '
                     'has none.')
  names, deletable = block_names(model), resnet.deletable_blocks(model)
  candidates = [i for i, d in enumerate(deletable) if d]
  error = error_fn(model, compiler_options)

  def without(blocks) -> float:
    keep = np.ones(len(names), np.float32)
    keep[list(blocks)] = 0
    return float(error(keep, params, batch_stats, chunks))

  rng = np.random.default_rng(seed)
  return {
      'blocks': names,
      'deletable': deletable,
      'error': without([]),
      'single': [{'block': names[i], 'error': without([i])} for i in candidates],
      'random': {str(k): [without(rng.choice(candidates, k, replace=False))
                          for _ in range(draws)]
                 for k in range(1, min(max_deleted, len(candidates)) + 1)},
  }
