"""The layer analysis of a sweep's cells: per-layer response std (Figure 7) and per-block
gradient norms, computed from a finished cell's config and checkpoint."""

import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import checkpoints
from resnet_jax import config_lib
from resnet_jax import input_pipeline
from resnet_jax import optim
from resnet_jax import run_dir
from resnet_jax import steps
from resnet_jax import train
from resnet_jax.analysis import results
from resnet_jax.models import resnet
from resnet_jax.run_data import Data
from resnet_jax.trainer import Trainer, build_model


def response_stds_fn(model, compiler_options=None):
  """A jitted (variables, images) -> the std of every conv layer's response (after BN,
  before the addition and ReLU), in layer order, as one vector."""
  def stds(variables, images):
    _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
    inter = state['intermediates']
    out = [jnp.std(r) for r in inter.get('responses', ())]  # The stem.
    for block in resnet.block_order(inter):
      out.extend(jnp.std(r) for r in block['responses'])
    return jnp.stack(out)
  return jax.jit(stds, compiler_options=compiler_options)


def gradient_norms_fn(model, compiler_options=None):
  """A jitted (variables, images, labels) -> the l2 norm of the loss gradient of each
  block's parameters, in block order, as one vector."""
  def norms(variables, images, labels):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, train=True,
                              mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss)(variables['params'])
    return jnp.stack([optax.tree.norm(b) for b in resnet.block_order(grads)])
  return jax.jit(norms, compiler_options=compiler_options)


def probe_params(model, params, rng, image_shape):
  """The parameters through which to measure gradients at initialisation: a zero head
  passes back no gradient, so a net that starts with one is probed through the random
  head (drawn from the same `rng`) that it would otherwise have started with."""
  if not getattr(model, 'zero_init_head', False):
    return params
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  random_head = model.clone(zero_init_head=False)
  head = jax.jit(lambda r: random_head.init(r, x, train=False)['params']['head'])(rng)
  # Placed as the rest (a trained net's params live on the run's mesh), so that one
  # compiled program measures both states.
  head = jax.device_put(head, jax.tree_util.tree_map(lambda a: a.sharding, params['head']))
  return {**params, 'head': head}


class RestoredCell(NamedTuple):
  """A cell rebuilt from its directory: the pieces that evaluating its nets needs."""
  config: ml_collections.ConfigDict
  data: Data
  model: Any
  trainer: Trainer
  init_state: steps.TrainState
  final_state: steps.TrainState
  step: int


def restore_cell(celldir: str) -> RestoredCell:
  """A cell's config, data, model and compiled steps, its state at initialisation and
  at its newest checkpoint."""
  with open(os.path.join(celldir, run_dir.CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  data = Data(config)  # Its arrays read once a process (run_data).
  total = config_lib.steps_for(config, data.steps_per_epoch)
  model = build_model(config, data.spec.num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, total)
  # No resident train split: the analysis evaluates held-out images only.
  trainer = Trainer(config, model, tx, schedule, data.image_shape, data.mean, data.std,
                    data.spec.num_classes)
  init_state = trainer.init_state(steps.seed_rngs(config.seed)[0])
  mngr = train.checkpoint_manager(celldir, config)
  step = mngr.latest_step()
  if step is None:
    mngr.close()
    raise FileNotFoundError(f'{celldir} has no checkpoint to analyse.')
  final, _ = checkpoints.restore(mngr, step, init_state)
  mngr.close()
  return RestoredCell(config, data, model, trainer, init_state, final, int(step))


def analyse_cell(celldir: str, num_examples: int = 256) -> dict:
  """Gradient norms at initialisation and at the newest checkpoint; response stds at
  the newest checkpoint."""
  config, data, model, trainer, init_state, final, step = restore_cell(celldir)
  init_params = probe_params(model, init_state.params, steps.seed_rngs(config.seed)[0],
                             data.image_shape)
  held_out, labels = data.held_out(num_examples)
  images = input_pipeline.preprocess(held_out, None, mean=data.mean, std=data.std)
  labels = jnp.asarray(labels)
  # The gradient norms compile once for both states (with fewer optimisations they
  # compile faster but run slower, for no gain).
  response_stds = response_stds_fn(model, trainer.compiler_options)
  gradient_norms = gradient_norms_fn(model, trainer.compiler_options)
  out = {'step': int(step)}
  variables = {'init': {'params': init_params, 'batch_stats': init_state.batch_stats},
               'final': {'params': final.params, 'batch_stats': final.batch_stats}}
  for name, v in variables.items():
    out[f'grad_norm_{name}'] = np.asarray(gradient_norms(v, images, labels)).tolist()
  # Responses of the trained net only (Figure 7): at initialisation BatchNorm's running
  # statistics are placeholders (mean 0, variance 1), through which a deep net's
  # responses grow without bound (to 6e4 at ResNet-56's last layers), and with batch
  # statistics every response's std is 1.
  out['response_std_final'] = np.asarray(response_stds(variables['final'], images)).tolist()
  return out


# Why a cell cannot be analysed: no checkpoint, a corrupt one, its data missing here.
UNAVAILABLE = (FileNotFoundError,) + train.USER_ERRORS


def cell_analysis(celldir: str, num_examples: int = 256) -> dict:
  """`analyse_cell`, kept in CELL/analysis.json: computed once per checkpoint (the
  sweep does it in each cell's own process, in parallel with other cells)."""
  saved = results.saved_layer_analysis(celldir, num_examples)
  if saved is not None:
    return saved
  t = time.perf_counter()
  out = dict(analyse_cell(celldir, num_examples), examples=num_examples)
  out['seconds'] = time.perf_counter() - t  # The sweep's time split counts it.
  run_dir.write_text(os.path.join(celldir, run_dir.LAYER_ANALYSIS_FILE), json.dumps(out))
  print(f'Analysed {os.path.basename(celldir)} (layer responses, gradient norms).',
        flush=True)
  return out
