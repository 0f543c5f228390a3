"""Residual blocks and their plain twins: basic and bottleneck, post- and pre-activation.

`shortcut` picks how the input reaches the output:
  identity  add the input as it is (shapes must match),
  A         subsample and zero-pad channels where the shape changes (no parameters),
  B         1x1 projection + BN where the shape changes, identity elsewhere,
  C         1x1 projection + BN in every block,
  none      no addition at all: the plain twin, with exactly the same layers.
Each block sows the response of every 3x3/1x1 layer after its BN (before the
addition and ReLU) as `responses`, and its output as `block_out`, into the
`intermediates` collection, so the layer analysis needs no second model.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.shortcuts import SHORTCUTS, check_shortcut  # pylint: disable=unused-import

ModuleDef = Any


def apply_shortcut(x, out_channels: int, strides: int, kind: str,
                   conv: ModuleDef, norm: ModuleDef):
  """Returns what the block adds to its residual branch, or None for `none`."""
  check_shortcut(kind)
  changes = strides != 1 or x.shape[-1] != out_channels
  if kind == 'none':
    return None
  if kind == 'identity' or (kind in ('A', 'B') and not changes):
    if changes:
      n, h, w, c = x.shape
      out = (n, -(-h // strides), -(-w // strides), out_channels)
      raise ValueError(
          f'An identity shortcut needs matching shapes, but this block maps '
          f'{tuple(x.shape)} to {out}: use shortcut="A" (zero-pad) or "B" '
          f'(projection) for blocks that change shape.')
    return x
  if kind == 'A':
    if x.shape[-1] > out_channels:
      raise ValueError(
          f'Shortcut "A" can only widen channels, but this block maps '
          f'{x.shape[-1]} to {out_channels} channels: use shortcut="B".')
    x = x[:, ::strides, ::strides, :]
    extra = out_channels - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  x = conv(out_channels, (1, 1), (strides, strides), name='proj_conv')(x)
  return norm(name='proj_bn')(x)


class _Block(nn.Module):
  """The fields shared by both blocks; `conv` and `norm` are injected partials."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  shortcut: str = 'A'
  preact: bool = False
  zero_init_last_bn: bool = False
  act: Callable = nn.relu


class BasicBlock(_Block):
  """Two 3x3 convolutions: conv-BN-ReLU-conv-BN, add, ReLU (or BN-ReLU-conv twice)."""
  expansion = 1

  @nn.compact
  def __call__(self, x):
    specs = [(self.filters, (3, 3), self.strides), (self.filters, (3, 3), 1)]
    return _run_block(self, x, specs)


class BottleneckBlock(_Block):
  """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4: the ResNet-50 block."""
  expansion = 4

  @nn.compact
  def __call__(self, x):
    specs = [(self.filters, (1, 1), 1), (self.filters, (3, 3), self.strides),
             (self.filters * 4, (1, 1), 1)]
    return _run_block(self, x, specs)


def _run_block(block, x, specs):
  """The body shared by both blocks; `specs` lists (features, kernel, stride)."""
  out_channels = specs[-1][0]
  residual = block.shortcut != 'none'
  last = len(specs) - 1
  # A zero-initialised last BN would zero the signal of a plain net: residual only.
  zero_last = block.zero_init_last_bn and residual
  if block.preact:
    pre = block.act(block.norm(name='bn_pre')(x))
    # The projection sees the pre-activated input, as in He et al. (2016b).
    sc = apply_shortcut(pre if block.shortcut in ('B', 'C') else x, out_channels,
                        block.strides, block.shortcut, block.conv, block.norm)
    y = pre
    for i, (features, kernel, stride) in enumerate(specs):
      if i > 0:
        y = block.norm(name=f'bn{i}')(y)
        block.sow('intermediates', 'responses', y)
        y = block.act(y)
      y = block.conv(features, kernel, (stride, stride), name=f'conv{i + 1}')(y)
    out = y if sc is None else y + sc
  else:
    y = x
    for i, (features, kernel, stride) in enumerate(specs):
      y = block.conv(features, kernel, (stride, stride), name=f'conv{i + 1}')(y)
      init = nn.initializers.zeros if (i == last and zero_last) else nn.initializers.ones
      y = block.norm(name=f'bn{i + 1}', scale_init=init)(y)
      block.sow('intermediates', 'responses', y)
      if i < last:
        y = block.act(y)
    sc = apply_shortcut(x, out_channels, block.strides, block.shortcut,
                        block.conv, block.norm)
    out = block.act(y if sc is None else y + sc)
  block.sow('intermediates', 'block_out', out)
  return out
