"""The CIFAR ResNet (option A) and its plain twin in PyTorch, timed as its users run it:
eager mode with PyTorch's defaults (its own thread count), in a script that imports
nothing of this project. The benchmark's PyTorch column (resnet_jax/benchmark.py) runs

  python peers/torch_resnet.py --depth=20 [--plain] --batch_size=128 --output=row.json

and reads the median step time and the process's environment (peer_env.py) from the JSON.
tests/peers_test.py loads `CifarResNet` from this file and checks that it computes our
net's logits from our weights.
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import peer_env


class _Block(nn.Module):
  """conv-BN-ReLU-conv-BN, + the option-A shortcut unless plain, ReLU.

  PyTorch's usual stride-2 convolution pads one pixel on each side; ours ('SAME', as XLA
  pads it) pads only the bottom and right on even sizes (every size these nets stride).
  `xla_padding` pads as we do, for the test that compares the two nets' logits; the cost
  is the same either way.
  """

  def __init__(self, cin, cout, stride, residual, xla_padding=False):
    super().__init__()
    self.same = xla_padding and stride > 1
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if self.same else 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.pad, self.residual = stride, cout - cin, residual

  def forward(self, x):
    y = self.conv1(F.pad(x, (0, 1, 0, 1)) if self.same else x)
    y = self.bn2(self.conv2(F.relu(self.bn1(y))))
    if self.residual:
      s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if self.pad:
        s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
      y = y + s
    return F.relu(y)


class CifarResNet(nn.Module):

  def __init__(self, depth, residual=True, width=16, in_channels=3, num_classes=10,
               xla_padding=False):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                              nn.BatchNorm2d(width), nn.ReLU())
    blocks, cin = [], width
    for i in range(3):
      cout = width * 2**i
      for j in range(n):
        blocks.append(_Block(cin, cout, 2 if (i and not j) else 1, residual, xla_padding))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def environment() -> dict:
  return peer_env.describe(
      torch=torch.__version__, intra_op_threads=torch.get_num_threads(),
      inter_op_threads=torch.get_num_interop_threads(),
      mkldnn=torch.backends.mkldnn.is_available(),
      cpu_capability=torch.backends.cpu.get_cpu_capability())


def train_step_ms(depth: int, residual: bool, batch_size: int, image_size: int = 32,
                  width: int = 16, in_channels: int = 3, num_classes: int = 10,
                  steps: int = 5, warmup: int = 5) -> dict:
  """Median ms of a full SGD step (forward, backward, update, BN statistics) after
  `warmup` untimed ones (the allocator and oneDNN's primitives warm up in the first)."""
  torch.manual_seed(0)
  model = CifarResNet(depth, residual, width, in_channels, num_classes)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch_size, in_channels, image_size, image_size)
  y = torch.randint(0, num_classes, (batch_size,))
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if i >= warmup:
      times.append(time.perf_counter() - t)
  ms = float(np.median(times)) * 1e3
  return {'torch_step_ms': ms, 'torch_images_per_second': batch_size / ms * 1e3,
          'torch_steps': steps, 'torch_warmup': warmup, 'torch_environment': environment()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--depth', type=int, required=True)
  parser.add_argument('--plain', action='store_true', help='No shortcuts.')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--width', type=int, default=16)
  parser.add_argument('--in_channels', type=int, default=3)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--output', required=True, help='The JSON file of the timing.')
  a = parser.parse_args()
  out = train_step_ms(a.depth, not a.plain, a.batch_size, a.image_size, a.width,
                      a.in_channels, a.num_classes, a.steps, a.warmup)
  with open(a.output, 'w') as f:
    json.dump(out, f)
  print(f'{out["torch_step_ms"]:.0f} ms a step, {out["torch_images_per_second"]:.0f} img/s')


if __name__ == '__main__':
  main()
