"""The convolution a model's layers call, by `model.conv_impl`.

'fast': `fast_conv` (XLA's forward pass; both gradients as forward convolutions on
XLA:CPU, XLA's own kernels on GPU and TPU). 'onednn': the forward pass and both
gradients on oneDNN through the native extension (CPU; float32 NHWC/HWIO convolutions
without dilation or groups, any other convolution as 'fast'). 'xla': XLA's own.
`trainer.build_model` turns 'onednn' into 'fast' where the extension cannot run.
"""

from jax import lax
import jax.numpy as jnp

from resnet_jax.models import fast_conv
from resnet_jax.models import onednn_conv

NAMES = ('fast', 'onednn', 'xla')


def _onednn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
            dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  plain = fast_conv.simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                                feature_group_count, precision, kwargs)
  if not (plain and lhs.dtype == rhs.dtype == jnp.float32):
    return fast_conv.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  strides, pads = fast_conv.strides_and_pads(lhs, rhs, window_strides, padding)
  return onednn_conv.conv(lhs, rhs, strides, pads)


def function(name: str):
  """The `conv_general_dilated` of conv_impl `name`."""
  if name not in NAMES:
    raise ValueError(f'Unknown conv_impl {name!r}: use one of {", ".join(NAMES)}.')
  return {'fast': fast_conv.conv_general_dilated, 'onednn': _onednn,
          'xla': lax.conv_general_dilated}[name]
