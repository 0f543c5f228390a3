"""Residual blocks and their plain twins: basic and bottleneck, post- and pre-activation.

`shortcut` picks how the input reaches the output:
  identity  add the input as it is (shapes must match),
  A         subsample and zero-pad channels where the shape changes (no parameters),
  B         1x1 projection + BN where the shape changes, identity elsewhere,
  C         1x1 projection + BN in every block,
  none      no addition at all: the plain twin, with exactly the same layers.
`norm` is None for nets without normalisation (their convolutions carry biases), and
`branch_scale` (resnet_jax/model_variants.py) multiplies a residual branch by a scalar:
SkipInit's, from 0, or Fixup's, from 1, with its scalar biases and initialisation.
Each block sows the response of every 3x3/1x1 layer after its BN (where there is one;
before the addition and ReLU) as `responses`, and its output as `block_out`, into the
`intermediates` collection, so the layer analysis needs no second model.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import onednn_norm
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
  return x if norm is None else norm(name='proj_bn')(x)


class _Block(nn.Module):
  """The fields shared by both blocks; `conv` and `norm` (None: no normalisation) are
  injected partials; `num_branches` is the net's count of residual branches (Fixup)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef | None
  strides: int = 1
  shortcut: str = 'A'
  preact: bool = False
  zero_init_last_bn: bool = False
  act: Callable = nn.relu
  branch_scale: str = 'none'
  num_branches: int = 1


class BasicBlock(_Block):
  """Two 3x3 convolutions: conv-BN-ReLU-conv-BN, add, ReLU (or BN-ReLU-conv twice)."""
  expansion = 1
  layers = 2  # Convolutions (and activations) on the branch.

  @nn.compact
  def __call__(self, x):
    specs = [(self.filters, (3, 3), self.strides), (self.filters, (3, 3), 1)]
    return _run_block(self, x, specs)


class BottleneckBlock(_Block):
  """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4: the ResNet-50 block."""
  expansion = 4
  layers = 3

  @nn.compact
  def __call__(self, x):
    specs = [(self.filters, (1, 1), 1), (self.filters, (3, 3), self.strides),
             (self.filters * 4, (1, 1), 1)]
    return _run_block(self, x, specs)


def scalar(module, name: str, value: float, like):
  """A learnable float32 scalar (SkipInit's and Fixup's multipliers and biases), from
  `value`, in the dtype of the activations `like` it meets."""
  return module.param(name, nn.initializers.constant(value), (), jnp.float32).astype(
      like.dtype)


def _normed(block, y, name: str, scale_init=nn.initializers.ones):
  """`y` through the block's BatchNorm `name`, or as it is in a net without one."""
  return y if block.norm is None else block.norm(name=name, scale_init=scale_init)(y)


def normed_act(module, y, norm, act, name: str):
  """act(norm(y)) of `module`'s BatchNorm `name` (y itself where `norm` is None), sowing
  norm(y) as one of its `responses`. Where the BatchNorm fuses the ReLU that follows it
  (oneDNN's, onednn_norm.py) and no one collects the responses, one fused call."""
  if (norm is not None and act is nn.relu and onednn_norm.fuses_relu(norm)
      and not module.is_mutable_collection('intermediates')):
    return norm(name=name)(y, relu=True)
  y = y if norm is None else norm(name=name)(y)
  module.sow('intermediates', 'responses', y)
  return act(y)


def _run_block(block, x, specs):
  """The body shared by both blocks; `specs` lists (features, kernel, stride)."""
  if block.branch_scale == 'fixup':
    return _run_fixup_block(block, x, specs)
  out_channels = specs[-1][0]
  residual = block.shortcut != 'none'
  last = len(specs) - 1
  # A zero-initialised last BN would zero the signal of a plain net: residual only.
  zero_last = block.zero_init_last_bn and residual
  if block.preact:
    pre = block.act(_normed(block, x, 'bn_pre'))
    # The projection sees the pre-activated input, as in He et al. (2016b).
    sc = apply_shortcut(pre if block.shortcut in ('B', 'C') else x, out_channels,
                        block.strides, block.shortcut, block.conv, block.norm)
    y = pre
    for i, (features, kernel, stride) in enumerate(specs):
      if i > 0:
        y = normed_act(block, y, block.norm, block.act, f'bn{i}')
      y = block.conv(features, kernel, (stride, stride), name=f'conv{i + 1}')(y)
    out = y if sc is None else _branch_scaled(block, y) + sc
  else:
    y = x
    for i, (features, kernel, stride) in enumerate(specs):
      y = block.conv(features, kernel, (stride, stride), name=f'conv{i + 1}')(y)
      if i < last or not residual:  # A plain block's last ReLU follows its BN directly.
        y = normed_act(block, y, block.norm, block.act, f'bn{i + 1}')
    sc = apply_shortcut(x, out_channels, block.strides, block.shortcut,
                        block.conv, block.norm)
    out = y if sc is None else _residual_tail(
        block, y, sc, f'bn{last + 1}',
        nn.initializers.zeros if zero_last else nn.initializers.ones)
  block.sow('intermediates', 'block_out', out)
  return out


def _residual_tail(block, y, sc, name: str, scale_init):
  """act(branch(norm(y)) + sc): a post-activation residual block's last BatchNorm `name`
  on its last convolution's output `y`, the shortcut `sc` and the activation, sowing
  norm(y) as a response. Where the BatchNorm fuses them (onednn_norm.py), the branch has
  no scale and no one collects the responses, one fused call."""
  if (block.norm is not None and block.act is nn.relu and block.branch_scale == 'none'
      and onednn_norm.fuses_relu(block.norm)
      and not block.is_mutable_collection('intermediates')):
    return block.norm(name=name, scale_init=scale_init)(y, relu=True, residual=sc)
  y = _normed(block, y, name, scale_init)
  block.sow('intermediates', 'responses', y)
  return block.act(_branch_scaled(block, y) + sc)


def _branch_scaled(block, y):
  """The residual branch `y`, times SkipInit's scalar (from 0) where the net has one."""
  return y * scalar(block, 'skip_scale', 0.0, y) if block.branch_scale == 'skipinit' else y


def _run_fixup_block(block, x, specs):
  """Fixup's post-activation block: a scalar bias before each convolution and activation,
  the branch's last convolution at zero and the others He's scaled by L**(-1/(2m-2)),
  a scalar multiplier before the last bias; the shortcut sees the input with its first
  bias where it changes shape (Zhang et al. 2019, their CIFAR code)."""
  out_channels, m, last = specs[-1][0], len(specs), len(specs) - 1
  he = 2.0 * block.num_branches ** (-2.0 / (2 * m - 2))  # The variance, scaled.
  scaled_he = nn.initializers.variance_scaling(he, 'fan_in', 'normal')
  y = x
  for i, (features, kernel, stride) in enumerate(specs):
    y = y + scalar(block, f'bias{i + 1}a', 0.0, y)
    if i == 0:
      x_biased = y
    init = nn.initializers.zeros if i == last else scaled_he
    y = block.conv(features, kernel, (stride, stride), kernel_init=init,
                   name=f'conv{i + 1}')(y)
    if i == last:
      y = y * scalar(block, 'scale', 1.0, y)
    y = y + scalar(block, f'bias{i + 1}b', 0.0, y)
    block.sow('intermediates', 'responses', y)
    if i < last:
      y = block.act(y)
  changes = block.strides != 1 or x.shape[-1] != out_channels
  sc = apply_shortcut(x_biased if changes else x, out_channels, block.strides,
                      block.shortcut, block.conv, block.norm)
  out = block.act(y + sc)
  block.sow('intermediates', 'block_out', out)
  return out
