"""ResNet-50 on ImageNet: a TPU-sized recipe (batch 1024, 90 epochs, cosine, bf16).

Needs ILSVRC2012 in the TFDS manual dir (--config.data.manual_dir). Arguments:
`depth=N` (18/34/50/101/152), `plain` (no skips), `shortcut=X` (B by default; A, the
zero-padded identity, for the basic blocks of depths 18 and 34 as in the paper's Table 2).
"""

from resnet_jax import config_lib


def get_config(arg: str = ''):
  args = config_lib.parse_arg(arg, flags=('plain',), values=('depth', 'shortcut'),
                              ints=('depth',))
  c = config_lib.base_config()
  c.data.name = 'imagenet2012'
  c.data.validation_size = 10000
  c.data.augment = 'inception_crop_flip'
  c.data.image_size = 224
  c.model.name = 'imagenet_resnet'
  c.model.depth = args.get('depth', 50)
  c.model.shortcut = 'none' if args.get('plain') else args.get('shortcut', 'B')
  c.model.num_filters = 64
  c.model.zero_init_last_bn = True
  c.model.dtype = 'bfloat16'
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.1 * 1024 / 256  # Linear scaling from 0.1 at batch 256.
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-5
  c.optimizer.weight_decay_on = 'kernels'
  c.optimizer.schedule = 'cosine'
  c.optimizer.warmup_steps = 5 * 1251  # Five epochs at batch 1024.
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.num_epochs = 90.0
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  return c
