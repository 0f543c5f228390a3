"""The lesson's own Keras program (shared/seeds/), as its users run it: a plain script with
TensorFlow's defaults, importing nothing of this project, so that the benchmark compares
our run with the real thing.

  python peers/keras_lesson.py [--data=fashion_mnist|mnist] [--output=keras.json]

The lesson trains on MNIST (`tf.keras.datasets.mnist.load_data()`, a download); offline,
Fashion-MNIST is read from the same IDX files `configs/seed_mnist.py` reads. Prints what
the lesson prints and the wall time of fit + evaluate; --output writes them as JSON with
the process's environment (versions, threads, variables; peer_env.py), which the
benchmark's lesson row reads (resnet_jax/lesson_benchmark.py).
"""

import argparse
import gzip
import json
import os
import platform
import struct
import sys
import time

import numpy as np

import peer_env

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist.


def read_idx(path):
  with gzip.open(path, 'rb') as f:
    data = f.read()
  ndim = data[3]
  shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(name, fashion_dir):
  if name == 'mnist':
    import tensorflow as tf
    return tf.keras.datasets.mnist.load_data()
  read = lambda f: read_idx(os.path.join(fashion_dir, f))
  return ((read('train-images-idx3-ubyte.gz'), read('train-labels-idx1-ubyte.gz')),
          (read('t10k-images-idx3-ubyte.gz'), read('t10k-labels-idx1-ubyte.gz')))


def onednn_on() -> bool:
  """Whether TensorFlow runs its oneDNN kernels: TF_ENABLE_ONEDNN_OPTS where set, else its
  default, on for x86-64 Linux builds since TensorFlow 2.9 (it exposes no query)."""
  value = peer_env.STARTED_WITH.get('TF_ENABLE_ONEDNN_OPTS')
  if value is None:
    return platform.machine() == 'x86_64' and sys.platform == 'linux'
  return value.lower() in ('1', 'true')


def environment(tf):
  return peer_env.describe(
      tensorflow=tf.__version__, keras=tf.keras.__version__, onednn=onednn_on(),
      intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
      inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data', choices=['fashion_mnist', 'mnist'], default='fashion_mnist')
  parser.add_argument('--fashion_mnist_dir', default=FASHION_MNIST_DIR)
  parser.add_argument('--output', help='A JSON file for the figures printed.')
  parser.add_argument('--max_examples', type=int, default=0,
                      help='Train and test on the first N images of each split (tests).')
  args = parser.parse_args()
  import tensorflow as tf
  from tensorflow.keras.layers import Input, Conv2D, Add, Activation, Flatten, Dense
  from tensorflow.keras.models import Model

  def residual_block(x, filters):  # As in the lesson, line for line.
    shortcut = x
    x = Conv2D(filters, (3, 3), padding='same', activation='relu')(x)
    x = Conv2D(filters, (3, 3), padding='same')(x)
    x = Add()([x, shortcut])
    x = Activation('relu')(x)
    return x

  inputs = Input(shape=(28, 28, 1))
  x = Conv2D(32, (3, 3), padding='same', activation='relu')(inputs)
  x = residual_block(x, 32)
  x = residual_block(x, 32)
  x = Flatten()(x)
  outputs = Dense(10, activation='softmax')(x)
  model = Model(inputs, outputs)
  model.compile(optimizer='adam', loss='sparse_categorical_crossentropy',
                metrics=['accuracy'])

  (x_train, y_train), (x_test, y_test) = load(args.data, args.fashion_mnist_dir)
  n = args.max_examples or None
  x_train, y_train, x_test, y_test = x_train[:n], y_train[:n], x_test[:n], y_test[:n]
  x_train = x_train[..., None] / 255.0
  x_test = x_test[..., None] / 255.0
  t0 = time.perf_counter()
  model.fit(x_train, y_train, epochs=1, batch_size=64, validation_split=0.1)
  t1 = time.perf_counter()
  loss, accuracy = model.evaluate(x_test, y_test)
  t2 = time.perf_counter()
  print(f'Test loss: {loss:.4f}')
  print(f'Test accuracy: {accuracy:.4f}')
  print(f'Wall time (fit + evaluate): {t2 - t0:.0f} s')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'data': args.data, 'train_examples': len(y_train),
                 'test_examples': len(y_test), 'params': int(model.count_params()),
                 'test_loss': float(loss), 'test_accuracy': float(accuracy),
                 'fit_seconds': t1 - t0, 'evaluate_seconds': t2 - t1,
                 'environment': environment(tf)}, f)


if __name__ == '__main__':
  main()
