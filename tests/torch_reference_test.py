"""The benchmark's PyTorch net is our CIFAR ResNet: same parameters, same logits.

`make test` installs torch (the `compare` extra); without it these tests skip.
"""

import jax
import numpy as np
import pytest

from resnet_jax import models

torch = pytest.importorskip('torch')
from resnet_jax import torch_reference  # pylint: disable=wrong-import-position


def _copy_weights(variables, net):
  """Our parameters and BN statistics into the PyTorch net, module by module."""
  params, stats = variables['params'], variables['batch_stats']

  def conv(m, p):
    m.weight.data = torch.from_numpy(np.asarray(p['kernel']).transpose(3, 2, 0, 1).copy())

  def bn(m, p, s):
    m.weight.data = torch.from_numpy(np.asarray(p['scale']).copy())
    m.bias.data = torch.from_numpy(np.asarray(p['bias']).copy())
    m.running_mean.data = torch.from_numpy(np.asarray(s['mean']).copy())
    m.running_var.data = torch.from_numpy(np.asarray(s['var']).copy())

  conv(net.stem[0], params['stem_conv'])
  bn(net.stem[1], params['stem_bn'], stats['stem_bn'])
  names = sorted((k for k in params if k.startswith('stage')),
                 key=lambda k: (k[5], int(k.split('block')[1])))
  assert len(names) == len(net.blocks)
  for name, block in zip(names, net.blocks):
    for i in (1, 2):
      conv(getattr(block, f'conv{i}'), params[name][f'conv{i}'])
      bn(getattr(block, f'bn{i}'), params[name][f'bn{i}'], stats[name][f'bn{i}'])
  net.head.weight.data = torch.from_numpy(np.asarray(params['head']['kernel']).T.copy())
  net.head.bias.data = torch.from_numpy(np.asarray(params['head']['bias']).copy())


@pytest.mark.parametrize('shortcut', ['A', 'none'])
def test_the_pytorch_net_computes_our_logits(shortcut):
  model = models.create_model('cifar_resnet', depth=14, num_filters=4, shortcut=shortcut,
                              num_classes=10, scan_blocks=False, conv_impl='xla')
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 12, 12, 3)))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  # Non-trivial statistics, so that the inference-mode comparison reads them.
  stats = jax.tree_util.tree_map(lambda v: v + 0.1 * np.arange(v.shape[-1]),
                                 variables['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': stats}
  net = torch_reference.CifarResNet(14, shortcut != 'none', width=4, xla_padding=True)
  assert models.count_params(variables['params']) == sum(p.numel() for p in net.parameters())
  _copy_weights(variables, net)
  images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for train in (False, True):  # PyTorch's train mode updates its statistics: eval first.
    net.train(train)
    ours = model.apply(variables, x, train=train, mutable=['batch_stats'])[0]
    with torch.no_grad():
      theirs = net(images).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=2e-4, atol=2e-4)


def test_train_step_ms_times_a_step():
  out = torch_reference.train_step_ms(8, True, 4, image_size=8, width=4, steps=2, warmup=1)
  assert out['torch_step_ms'] > 0 and out['torch_images_per_second'] > 0
  assert out['torch_version'].startswith(torch.__version__.split('+')[0])
