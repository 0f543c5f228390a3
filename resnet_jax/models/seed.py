"""The small model of the lesson (`shared/seeds/`), layer for layer as its Keras code.

3x3/32 conv with bias and ReLU, two identity residual blocks of two 3x3/32
convs with bias and no BatchNorm, flatten, dense: 288,202 parameters for
28x28x1 inputs and 10 classes. Keras' default (Glorot uniform) initialisation.
"""

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import conv_impls


class SeedResNet(nn.Module):
  num_classes: int = 10
  filters: int = 32
  num_blocks: int = 2
  residual: bool = True  # False: the plain twin, the same layers without the addition.
  conv_impl: str = 'fast'  # conv_impls.NAMES: 'fast', 'onednn' or 'xla'.

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No BatchNorm or dropout: train and eval are the same function.
    impl = conv_impls.function(self.conv_impl)
    keras_init = nn.initializers.glorot_uniform()  # Keras' default for Conv2D and Dense.
    conv = lambda name: nn.Conv(self.filters, (3, 3), padding='SAME', name=name,
                                kernel_init=keras_init, conv_general_dilated=impl)
    x = nn.relu(conv('stem_conv')(x.astype(jnp.float32)))
    for i in range(self.num_blocks):
      y = nn.relu(conv(f'block{i + 1}_conv1')(x))
      y = conv(f'block{i + 1}_conv2')(y)
      self.sow('intermediates', 'responses', y)
      x = nn.relu(y + x if self.residual else y)
      self.sow('intermediates', 'block_out', x)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, kernel_init=keras_init, name='head')(x)
