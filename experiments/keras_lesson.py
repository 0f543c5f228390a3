"""The lesson's own Keras program (shared/seeds/), run on the same data, for comparison.

python -m experiments.keras_lesson [--data=fashion_mnist|mnist] [--output=keras.json]
Prints test loss, test accuracy and the wall time of fit + evaluate, to set
beside `python -m resnet_jax.main --config=configs/seed_mnist.py`; --output writes them
as JSON (the benchmark's lesson row reads it: resnet_jax/lesson_benchmark.py).
"""

import json
import os
import time

from absl import app
from absl import flags

from resnet_jax import cli
from resnet_jax import datasets
from resnet_jax import run_dir

_DATA = flags.DEFINE_enum('data', 'fashion_mnist', ['fashion_mnist', 'mnist'],
                          'Data set: the lesson used mnist, which needs a download.')
_FASHION_DIR = flags.DEFINE_string('fashion_mnist_dir', datasets.DEFAULT_FASHION_MNIST_DIR,
                                   'Where the Fashion-MNIST IDX files are.')
_OUTPUT = flags.DEFINE_string('output', None, 'A JSON file for the figures printed.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 0, 'Train and test on the first N '
                                     'images of each split only (0: all), for tests.',
                                     lower_bound=0)


def load(name):
  if name == 'mnist':
    import tensorflow as tf
    return tf.keras.datasets.mnist.load_data()
  d = _FASHION_DIR.value
  read = lambda f: datasets.read_idx(os.path.join(d, f))
  return ((read('train-images-idx3-ubyte.gz'), read('train-labels-idx1-ubyte.gz')),
          (read('t10k-images-idx3-ubyte.gz'), read('t10k-labels-idx1-ubyte.gz')))


def main(argv):
  cli.refuse_arguments(argv)
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
  print(f'Keras parameters: {model.count_params():,}')

  (x_train, y_train), (x_test, y_test) = load(_DATA.value)
  n = _MAX_EXAMPLES.value or None
  x_train, y_train, x_test, y_test = x_train[:n], y_train[:n], x_test[:n], y_test[:n]
  x_train = x_train[..., None] / 255.0
  x_test = x_test[..., None] / 255.0
  t0 = time.perf_counter()
  model.fit(x_train, y_train, epochs=1, batch_size=64, validation_split=0.1, verbose=2)
  t1 = time.perf_counter()
  loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
  t2 = time.perf_counter()
  print(f'Test loss: {loss:.4f}')
  print(f'Test accuracy: {accuracy:.4f}')
  print(f'Wall time (fit + evaluate): {t2 - t0:.0f} s')
  if _OUTPUT.value:
    run_dir.write_text(_OUTPUT.value, json.dumps({
        'data': _DATA.value, 'train_examples': len(y_train), 'test_examples': len(y_test),
        'params': int(model.count_params()), 'test_loss': float(loss),
        'test_accuracy': float(accuracy), 'fit_seconds': t1 - t0,
        'evaluate_seconds': t2 - t1, 'tensorflow': tf.__version__}))
  del tf


if __name__ == '__main__':
  app.run(main)
