"""CIFAR-10 exactly as He et al. 2016, section 4.2.

Option A shortcuts, batch 128, SGD lr 0.1, momentum 0.9, weight decay 1e-4,
lr /10 at 32k and 48k steps, stop at 64k, a 45k/5k train/validation split,
pad-4 crop and flip; ResNet-110 (and deeper) warms up at lr 0.01 for 400 steps.
Arguments: `depth=N` (6n+2, default 20), `plain` (no skips), `shortcut=B`.
python -m resnet_jax.main --config=configs/cifar10.py:depth=56,plain --workdir=runs/p56
"""

from resnet_jax import config_lib


def get_config(arg: str = ''):
  args = config_lib.parse_arg(arg, flags=('plain',), values=('depth', 'shortcut'),
                              ints=('depth',))
  c = config_lib.base_config()
  c.data.name = 'cifar10'
  c.data.validation_size = 5000
  c.data.augment = 'crop_flip'
  c.data.pad = 4
  c.model.depth = args.get('depth', 20)
  c.model.shortcut = 'none' if args.get('plain') else args.get('shortcut', 'A')
  c.model.scan_blocks = True
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_on = 'all'
  c.optimizer.schedule = 'piecewise'
  c.optimizer.boundaries = (32000, 48000)
  c.optimizer.decay_factor = 0.1
  if c.model.depth >= 110:
    c.optimizer.warmup_steps = 400
    c.optimizer.warmup_kind = 'constant'
    c.optimizer.warmup_learning_rate = 0.01
  c.batch_size = 128
  c.num_train_steps = 64000
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
