"""The ResNet families of He et al. 2016: CIFAR (depth 6n+2) and ImageNet (18-152).

One `ResNet` module serves both: the stem, the block class and the stage sizes
differ. A stage's first block may change shape; its other blocks are identical
and run under `nn.scan` (optionally `nn.remat`), so compile time does not grow
with depth. `shortcut='none'` gives the plain twin of the same depth; `norm`,
`branch_scale` and `activation` give the nets without normalisation, with SkipInit or
Fixup, or with TAT (resnet_jax/model_variants.py). `keep`, one 0/1
entry per block in network order, deletes blocks at run time (the lesion study): a
block whose entry is 0 passes its input on unchanged, in scanned stages too.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import model_variants
from resnet_jax.models import blocks
from resnet_jax.models import conv_impls
from resnet_jax.models import onednn_norm
from resnet_jax.models import tat

ModuleDef = Any

he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _kept(block_out, block_in, keep):
  """The block's output, or its input where `keep` (a scalar, or None: kept) is 0."""
  return block_out if keep is None else jnp.where(keep > 0, block_out, block_in)


class _ScanCell(nn.Module):
  """Adapts a block to `nn.scan`'s (carry, x) -> (carry, y) signature; x: its keep entry."""
  block: ModuleDef

  @nn.compact
  def __call__(self, x, keep):
    return _kept(self.block(name='block')(x), x, keep), None


class ResNet(nn.Module):
  """A ResNet: stem, stages of blocks (widths num_filters * 2**i), pool, dense."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int = 64
  stem: str = 'imagenet'  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'cifar': 3x3 conv.
  shortcut: str = 'B'
  preact: bool = False
  zero_init_last_bn: bool = False
  zero_init_head: bool = False  # Logits start at 0 (loss ln C), for plain and residual nets.
  norm: str = 'batch'  # model_variants.NORMS: 'batch', or 'none' (convolutions with biases).
  branch_scale: str = 'none'  # model_variants.BRANCH_SCALES: 'none', 'skipinit', 'fixup'.
  activation: str = 'relu'  # model_variants.ACTIVATIONS: 'relu' (He init) or 'tat'.
  scan_blocks: bool = True
  remat: bool = False
  conv_impl: str = 'fast'  # conv_impls.NAMES: 'fast', 'onednn' (BatchNorm too) or 'xla'.
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True, keep=None):
    """Logits of images `x`; `keep` (None: every block) has an entry per block in network
    order, and its zeros delete the blocks that keep their input's shape (those that
    `deletable_blocks` marks; the entries of the others are not read)."""
    if self.num_filters < 1:
      raise ValueError(f'num_filters (the first stage\'s width) must be >= 1, got '
                       f'{self.num_filters}.')
    conv, norm, act = _layers(self, train)
    x = _stem(self, x.astype(self.dtype), conv, norm, act)
    num_blocks = sum(self.stage_sizes)

    if keep is not None:
      keep = jnp.asarray(keep)
      if keep.shape != (sum(self.stage_sizes),):
        raise ValueError(f'keep needs one entry per block ({sum(self.stage_sizes)}), got '
                         f'shape {keep.shape}.')
    first = 0  # The index of the stage's first block in `keep`.
    for i, size in enumerate(self.stage_sizes):
      stage_keep = [None] * size if keep is None else keep[first:first + size]
      first += size
      block = functools.partial(
          self.block_cls, filters=self.num_filters * 2**i, conv=conv, norm=norm,
          shortcut=self.shortcut, preact=self.preact,
          zero_init_last_bn=self.zero_init_last_bn, act=act,
          branch_scale=self.branch_scale, num_branches=num_blocks)
      if self.remat:
        block = nn.remat(block)
      y = block(strides=1 if i == 0 else 2, name=f'stage{i + 1}_block1')(x)
      x = _kept(y, x, stage_keep[0]) if y.shape == x.shape else y
      if size == 1:
        continue
      if self.scan_blocks:
        cell = nn.remat(_ScanCell) if self.remat else _ScanCell
        scanned = nn.scan(
            cell, variable_axes={'params': 0, 'batch_stats': 0, 'intermediates': 0},
            split_rngs={'params': True}, length=size - 1)
        x, _ = scanned(block=functools.partial(block, strides=1),
                       name=f'stage{i + 1}_blocks')(
                           x, None if keep is None else stage_keep[1:])
      else:
        for j in range(1, size):
          x = _kept(block(strides=1, name=f'stage{i + 1}_block{j + 1}')(x), x,
                    stage_keep[j])

    return _head(self, x, norm, act)


def _layers(model: ResNet, train: bool):
  """The (conv, norm, act) that every layer of `model` is built from: norm is None
  without normalisation; act is TAT's transformed leaky ReLU or ReLU."""
  model_variants.check(model.shortcut, model.norm, model.branch_scale, model.activation,
                       model.preact, model.zero_init_last_bn)
  use_tat = model.activation == 'tat'
  # Without normalisation the convolutions carry biases, except Fixup's (scalar ones).
  conv = functools.partial(
      nn.Conv, use_bias=model.norm == 'none' and model.branch_scale != 'fixup',
      padding='SAME', kernel_init=tat.delta_orthogonal if use_tat else he_normal,
      dtype=model.dtype, param_dtype=model.param_dtype,
      conv_general_dilated=conv_impls.function(model.conv_impl))
  # oneDNN's BatchNorm (fusing the ReLU after it) goes with oneDNN's convolutions.
  norm = None if model.norm == 'none' else functools.partial(
      onednn_norm.BatchNorm if model.conv_impl == 'onednn' else nn.BatchNorm,
      use_running_average=not train, momentum=model.bn_momentum,
      epsilon=1e-5, dtype=model.dtype, param_dtype=model.param_dtype)
  # TAT shapes the C map of the chain of every activation: the stem's and the blocks'.
  act = (tat.activation(1 + sum(model.stage_sizes) * model.block_cls.layers) if use_tat
         else nn.relu)
  return conv, norm, act


def _stem(model: ResNet, x, conv, norm, act):
  """The stem: a 7x7/2 conv and 3x3/2 max pool (ImageNet) or a 3x3 conv (CIFAR), with
  its BN and activation unless the blocks pre-activate."""
  if model.stem == 'imagenet':
    x = conv(model.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
             name='stem_conv')(x)
  elif model.stem == 'cifar':
    x = conv(model.num_filters, (3, 3), name='stem_conv')(x)
  else:
    raise ValueError(f'Unknown stem {model.stem!r}: use "imagenet" or "cifar".')
  if not model.preact:
    if model.branch_scale == 'fixup':  # No norm: its scalar bias before the activation.
      x = x + blocks.scalar(model, 'stem_bias', 0.0, x)
    x = blocks.normed_act(model, x, norm, act, 'stem_bn')
  if model.stem == 'imagenet':
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  return x


def _head(model: ResNet, x, norm, act):
  """Global average pool and the classifier (float32 logits)."""
  if model.preact:
    x = act(x if norm is None else norm(name='final_bn')(x))
  x = jnp.mean(x, axis=(1, 2))
  fixup = model.branch_scale == 'fixup'
  if fixup:  # Fixup's scalar bias before the classifier, which starts at zero.
    x = x + blocks.scalar(model, 'head_bias', 0.0, x)
  head_init = (nn.initializers.zeros if model.zero_init_head or fixup
               else tat.delta_orthogonal if model.activation == 'tat'
               else nn.initializers.lecun_normal())
  x = nn.Dense(model.num_classes, dtype=model.dtype, param_dtype=model.param_dtype,
               kernel_init=head_init, name='head')(x)
  return x.astype(jnp.float32)


def deletable_blocks(model: ResNet) -> list[bool]:
  """Per block in network order (stage by stage), whether it keeps its input's shape,
  so that deleting it (`keep`) leaves a working net: not the first block of a stage that
  downsamples or widens."""
  out = []
  for i, size in enumerate(model.stage_sizes):
    widens = model.block_cls.expansion != 1  # The stem's width is num_filters.
    out += [i == 0 and not widens] + [True] * (size - 1)
  return out


def cifar_stage_sizes(depth: int) -> list[int]:
  """Blocks per stage of the CIFAR family: depth = 6n + 2 gives [n, n, n]."""
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(
        f'CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, 110, '
        f'1202, ...), got {depth!r}.')
  return [(depth - 2) // 6] * 3


def CifarResNet(depth: int = 20, num_classes: int = 10, num_filters: int = 16,
                shortcut: str = 'A', **kwargs) -> ResNet:
  """The CIFAR family of He et al. 2016, section 4.2 (stem 3x3/16, 16/32/64 filters)."""
  return ResNet(stage_sizes=cifar_stage_sizes(depth), block_cls=blocks.BasicBlock,
                num_classes=num_classes, num_filters=num_filters, stem='cifar',
                shortcut=shortcut, **kwargs)


IMAGENET_DEPTHS = {
    18: ([2, 2, 2, 2], blocks.BasicBlock),
    34: ([3, 4, 6, 3], blocks.BasicBlock),
    50: ([3, 4, 6, 3], blocks.BottleneckBlock),
    101: ([3, 4, 23, 3], blocks.BottleneckBlock),
    152: ([3, 8, 36, 3], blocks.BottleneckBlock),
}


def ImageNetResNet(depth: int = 50, num_classes: int = 1000, num_filters: int = 64,
                   shortcut: str = 'B', **kwargs) -> ResNet:
  """ResNet-18/34/50/101/152 (7x7/2 stem, max pool, 64..512 filters)."""
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(f'ImageNet ResNet depth must be one of '
                     f'{sorted(IMAGENET_DEPTHS)}, got {depth!r}.')
  stage_sizes, block_cls = IMAGENET_DEPTHS[depth]
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, num_classes=num_classes,
                num_filters=num_filters, stem='imagenet', shortcut=shortcut, **kwargs)


# The names the modules above give their stages' blocks (stage{i}_block1, then
# stage{i}_block{j} unrolled or stage{i}_blocks scanned), read back by the analyses.
def in_scanned_stage(path) -> bool:
  """Whether a parameter's tree path lies in a scanned stage (a leading axis of blocks)."""
  return any(str(getattr(k, 'key', '')).endswith('_blocks') for k in path)


def block_order(tree) -> list:
  """The blocks of a ResNet variable tree in network order; scanned blocks unstacked."""
  out, i = [], 1
  while f'stage{i}_block1' in tree:
    out.append(tree[f'stage{i}_block1'])
    if f'stage{i}_blocks' in tree:
      stacked = tree[f'stage{i}_blocks']['block']
      n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
      out.extend(jax.tree_util.tree_map(lambda x, k=k: x[k], stacked) for k in range(n))
    else:
      j = 2
      while f'stage{i}_block{j}' in tree:
        out.append(tree[f'stage{i}_block{j}'])
        j += 1
    i += 1
  return out
