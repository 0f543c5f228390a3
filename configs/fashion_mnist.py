"""The embedded default: a CIFAR-style ResNet-20 (option A) on Fashion-MNIST, offline.

python -m resnet_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist
Arguments: `plain` (the plain twin), `depth=N` (any 6n+2), `shortcut=A|B|C|identity`,
e.g. `:depth=56,plain`.
"""

from resnet_jax import config_lib


def get_config(arg: str = ''):
  args = config_lib.parse_arg(arg, flags=('plain',), values=('depth', 'shortcut'),
                              ints=('depth',))
  c = config_lib.base_config()
  c.data.name = 'fashion_mnist'
  # Short budgets favour no augmentation: in one epoch flips cost about two points
  # of test accuracy, pad-and-crop more (measured here; the table is in docs/runs.md).
  c.data.augment = 'none'
  c.model.depth = args.get('depth', 20)
  c.model.shortcut = 'none' if args.get('plain') else args.get('shortcut', 'A')
  # On XLA:CPU an unrolled ResNet-20 steps faster than a scanned one
  # (docs/performance.md); deep nets should scan (model.scan_blocks=True) so that
  # compile time stays flat.
  c.model.scan_blocks = False
  c.optimizer.learning_rate = 0.05
  c.optimizer.nesterov = True
  c.optimizer.schedule = 'cosine'
  c.optimizer.weight_decay = 5e-4
  c.batch_size = 64
  c.num_epochs = 6.0  # Its time on 2 CPU cores: docs/runs.md.
  c.eval_every_steps = 1000
  return c
