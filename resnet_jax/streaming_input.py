"""tf.data input for data sets too large for host memory (ImageNet).

Each process reads its own shard of the split; images are decoded, cropped
(Inception-style random crop and flip for training, centre crop for eval)
and resized on the host, and leave as uint8 like the in-memory path.
"""

import numpy as np

from resnet_jax import datasets

STREAM_AUGMENTATIONS = ('inception_crop_flip', 'center_crop')
CROP_PADDING = 32


def _center_crop(image, size):
  import tensorflow as tf
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  crop = tf.cast(size / (size + CROP_PADDING) *
                 tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
  image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
  return tf.image.resize(image, [size, size], method='bicubic')


def _inception_crop(image, size, seed):
  import tensorflow as tf
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0.1, max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  image = tf.image.resize(image, [size, size], method='bicubic')
  return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def _split_for_process(split: str, process_index: int, process_count: int):
  import tensorflow_datasets as tfds
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]


def train_split_names(spec, validation_size: int):
  """TFDS split names of (train, validation): the validation images are the last
  `validation_size` of TFDS's train split; with none held out, validation is None."""
  if validation_size == 0:  # 'train[:-0]' would be empty.
    return 'train', None
  return f'train[:-{validation_size}]', f'train[-{validation_size}:]'


def train_iterator(builder, split: str, local_batch_size: int, image_size: int,
                   seed: int, start_step: int, process_index: int = 0,
                   process_count: int = 1):
  """Endless iterator of {'image': uint8 (B, S, S, 3), 'label'} training batches.

  The order is fixed by (seed, start_step): a resumed run gets a deterministic,
  though not identical, stream (exact resume holds for the in-memory data sets).
  """
  tf = datasets.import_tensorflow()
  ds = builder.as_dataset(split=_split_for_process(split, process_index, process_count),
                          shuffle_files=True,
                          read_config=_read_config(seed + start_step))
  ds = ds.repeat().shuffle(16 * local_batch_size, seed=seed + start_step)
  rng = tf.data.Dataset.random(seed=seed * 7919 + start_step).batch(2)

  def prep(example, s):
    image = _inception_crop(example['image'], image_size, tf.cast(s, tf.int32) % (2**31 - 2))
    return {'image': tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
            'label': tf.cast(example['label'], tf.int32)}

  ds = tf.data.Dataset.zip(ds, rng).map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.as_numpy_iterator())


def eval_iterator(builder, split: str, local_batch_size: int, image_size: int,
                  process_index: int = 0, process_count: int = 1):
  """Padded eval batches with a `mask` of real examples, as the in-memory path gives."""
  tf = datasets.import_tensorflow()
  ds = builder.as_dataset(split=_split_for_process(split, process_index, process_count),
                          shuffle_files=False)

  def prep(example):
    image = _center_crop(example['image'], image_size)
    return {'image': tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
            'label': tf.cast(example['label'], tf.int32), 'mask': 1.0}

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
  for batch in ds.batch(local_batch_size).as_numpy_iterator():
    n = len(batch['label'])
    if n < local_batch_size:
      pad = local_batch_size - n
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    batch['mask'] = batch['mask'].astype(np.float32)
    yield batch


def _read_config(seed):
  import tensorflow_datasets as tfds
  return tfds.ReadConfig(shuffle_seed=seed)
