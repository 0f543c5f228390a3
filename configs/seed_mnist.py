"""The lesson's model and recipe (`shared/seeds/`): Adam, batch 64, one epoch, 10% validation.

Data: Fashion-MNIST by default so that it runs offline; `:mnist` for the lesson's
own data set. Inputs are scaled to [0, 1] only, as the lesson's x / 255.0.
"""

import ml_collections

from resnet_jax import config_lib


def get_config(arg: str = ''):
  args = config_lib.parse_arg(arg, flags=('mnist', 'fashion_mnist', 'plain'))
  c = config_lib.base_config()
  c.data.name = 'mnist' if args.get('mnist') else 'fashion_mnist'
  c.data.validation_size = 6000  # Keras' validation_split=0.1: the last 10%.
  c.data.augment = 'none'
  c.data.normalize = 'unit'
  c.model = ml_collections.ConfigDict(dict(
      name='seed_resnet', filters=32, num_blocks=2, residual=not args.get('plain'),
      conv_impl='onednn'))  # As Keras: oneDNN's convolutions (fast_conv where unbuilt).
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 1e-3  # Keras' Adam defaults.
  c.optimizer.eps = 1e-7
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = 'constant'
  c.batch_size = 64
  c.eval_batch_size = 64  # XLA:CPU's convolutions are fastest per image at small batches.
  c.num_epochs = 1.0
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 500
  return c
