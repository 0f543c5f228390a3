"""The pure steps: one SGD step and one evaluation batch, functions of (state, batch)."""

from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from resnet_jax import input_pipeline
from resnet_jax import streaming_input


class TrainState(train_state.TrainState):
  batch_stats: Any


def seed_rngs(seed: int):
  """The keys a run of `seed` initialises its state from and draws its steps' keys from."""
  return jax.random.split(jax.random.PRNGKey(seed))


def create_train_state(rng, model, tx, image_shape) -> TrainState:
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def classification_metrics(logits, labels, num_classes: int, weights=None):
  """Summed loss, top-1 (and top-5 where classes > 10) and the example count."""
  weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  out = {'loss': jnp.sum(loss * weights),
         'accuracy': jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
         'count': jnp.sum(weights)}
  if num_classes > 10:
    top5 = jnp.any(jax.lax.top_k(logits, 5)[1] == labels[:, None], axis=-1)
    out['top5_accuracy'] = jnp.sum(top5 * weights)
  return out


def train_step(state: TrainState, batch, rng, *, schedule, data_cfg, mean, std,
               num_classes: int):
  """One SGD step on `batch`: (state, batch, rng) -> (state, metrics). Pure."""
  rng = jax.random.fold_in(rng, state.step)
  kind = 'none' if data_cfg.augment in streaming_input.STREAM_AUGMENTATIONS \
      else data_cfg.augment  # Streamed data arrive augmented from tf.data.
  images = input_pipeline.preprocess(batch['image'], rng, mean=mean, std=std,
                                     kind=kind, pad=data_cfg.pad)
  labels = batch['label']

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates)

  (_, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  sums = classification_metrics(logits, labels, num_classes)
  count = sums.pop('count')
  metrics = {k: v / count for k, v in sums.items()}
  metrics.update(learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(new_state.params))
  return new_state, metrics


def gather_train_step(state: TrainState, batch, rng, images, labels, **kwargs):
  """`train_step` on the examples `batch['index']` of a split held in device memory."""
  batch = {'image': jnp.take(images, batch['index'], axis=0),
           'label': jnp.take(labels, batch['index'], axis=0)}
  return train_step(state, batch, rng, **kwargs)


def eval_step(state: TrainState, batch, *, mean, std, num_classes: int):
  """Summed metrics of one padded eval batch (`mask` marks real examples)."""
  images = input_pipeline.preprocess(batch['image'], None, mean=mean, std=std)
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          images, train=False)
  return classification_metrics(logits, batch['label'], num_classes, batch['mask'])
