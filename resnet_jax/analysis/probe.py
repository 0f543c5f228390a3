"""What the why-skips analyses share: a fixed set of images, and a trained net's loss and
accuracy on them in inference mode (BatchNorm's running statistics), in chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import input_pipeline


class Probe:
  """The first `n` images of a split, normalised as the run trained (no augmentation),
  padded to whole chunks of `chunk` images with a mask that leaves the padding out."""

  def __init__(self, data, split: str, n: int, chunk: int = 256):
    images, labels = data.first(split, n)
    self.split, self.n = split, len(labels)
    if not self.n:
      raise ValueError(f'The {split} split has no images to probe.')
    self.chunk = min(chunk, self.n)
    pad = -self.n % self.chunk
    x = input_pipeline.preprocess(images, None, mean=data.mean, std=data.std)
    self.images = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    self.labels = jnp.asarray(np.pad(labels, (0, pad)), jnp.int32)
    self.weights = jnp.asarray(np.arange(self.n + pad) < self.n, jnp.float32)

  def chunks(self):
    """(images, labels, weights) with a leading axis of chunks."""
    c = self.chunk
    return jax.tree_util.tree_map(lambda a: a.reshape((-1, c) + a.shape[1:]),
                                  (self.images, self.labels, self.weights))


def loss_and_accuracy(model, params, batch_stats, chunks, keep=None):
  """Mean cross-entropy and accuracy of `model` over `chunks` (Probe.chunks), BatchNorm in
  inference mode; `keep` deletes blocks (models.resnet). Traceable: jit it."""
  kwargs = {} if keep is None else {'keep': keep}

  def one(chunk):
    images, labels, weights = chunk
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                         train=False, **kwargs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(weights * loss), jnp.sum(weights * correct)

  losses, correct = jax.lax.map(one, chunks)
  n = jnp.sum(chunks[2])
  return jnp.sum(losses) / n, jnp.sum(correct) / n
