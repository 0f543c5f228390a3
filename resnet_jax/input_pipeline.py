"""Batches addressed by step, and jitted, seeded augmentation.

The batch of step `s` depends only on (seed, s): epoch `s // steps_per_epoch`
is a fresh permutation drawn from (seed, epoch), so a resumed run sees exactly
the batches an uninterrupted one would have. Images travel as uint8 and are
augmented and normalised on the device inside the compiled step.
"""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.datasets import AUGMENTATIONS, ArraySplit


class TrainBatches:
  """The training batch of any step: this process's slice of the global batch."""

  def __init__(self, split: ArraySplit, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    if global_batch_size > len(split):
      raise ValueError(f'batch_size {global_batch_size} is larger than the '
                       f'{len(split)} training examples: lower --config.batch_size.')
    self.split = split
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.offset = process_index * self.local_batch_size
    self.seed = seed
    self.steps_per_epoch = len(split) // global_batch_size
    self._epoch, self._perm = None, None

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._epoch, self._perm = epoch, rng.permutation(len(self.split))
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    """This process's slice of the training examples of global batch `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    start = i * self.global_batch_size
    # Sorted for locality, then sliced: every process count sees the same global batch.
    batch = np.sort(self.permutation(epoch)[start:start + self.global_batch_size])
    return batch[self.offset:self.offset + self.local_batch_size].astype(np.int32)

  def __call__(self, step: int):
    idx = self.indices(step)
    return {'image': self.split.images[idx], 'label': self.split.labels[idx]}


def eval_batches(split: ArraySplit, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1):
  """Yields this process's slices of padded eval batches with a `mask` of real examples."""
  local = global_batch_size // process_count
  n = len(split)
  for start in range(0, n, global_batch_size):
    idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
    mask = idx < n
    idx = np.where(mask, idx, 0)
    yield {'image': split.images[idx], 'label': split.labels[idx],
           'mask': mask.astype(np.float32)}


def channel_stats(images: np.ndarray):
  """Per-channel mean and std of uint8 images, in [0, 1] units, from each channel's
  histogram of its 256 values (about 8x faster than float64 arithmetic on every pixel)."""
  x = images.reshape(-1, images.shape[-1])
  values = np.arange(256, dtype=np.float64) / 255.0
  means, stds = [], []
  for c in range(x.shape[1]):
    counts = np.bincount(x[:, c], minlength=256).astype(np.float64)
    mean = counts @ values / len(x)
    means.append(mean)
    stds.append(np.sqrt(counts @ (values - mean) ** 2 / len(x)))
  return np.asarray(means, np.float32), np.asarray(stds, np.float32)


def augment(images, rng, kind: str = 'crop_flip', pad: int = 4):
  """Random pad-and-crop and/or horizontal flip of a float batch (N, H, W, C), jittable."""
  if kind not in AUGMENTATIONS:
    raise ValueError(f'Unknown augmentation {kind!r}: use one of {", ".join(AUGMENTATIONS)}.')
  n, h, w, c = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if kind in ('crop_flip', 'crop') and pad > 0:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    images = jax.vmap(crop)(padded, offsets)
  if kind in ('crop_flip', 'flip'):
    flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1, :], images)
  return images


def preprocess(images, rng, *, mean, std, kind: str = 'none', pad: int = 4):
  """uint8 images -> augmented (when `rng` is given) and normalised float32."""
  x = images.astype(jnp.float32) / 255.0
  if rng is not None and kind != 'none':
    x = augment(x, rng, kind, pad)
  return (x - jnp.asarray(mean)) / jnp.asarray(std)
