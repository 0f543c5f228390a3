"""The benchmark's peers (peers/): the PyTorch net computes our CIFAR ResNet's logits
from our weights, the lesson's Keras program writes what it prints, and both run as their
users run them: no module of this project, none of its environment settings.

`make test` installs torch (the `compare` extra); without it the PyTorch tests skip.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

import resnet_jax
from resnet_jax import benchmark
from resnet_jax import models
from resnet_jax import peer_process
from tests.conftest import REPO


def _load_peer(name):
  """A peer script as a module, as the test of its net needs it (peer_env beside it)."""
  sys.path.insert(0, peer_process.PEERS_DIR)
  try:
    spec = importlib.util.spec_from_file_location(
        f'peer_{name}', os.path.join(peer_process.PEERS_DIR, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(peer_process.PEERS_DIR)


@pytest.fixture
def project_settings(monkeypatch):
  """A user's environment with a variable of their own (which a peer must see), and this
  process's with settings of the project's on top (which it must not): the quieting of
  TensorFlow (here JAX's, imported first by conftest), the switch that turned
  TensorFlow's oneDNN kernels off, a sweep worker's threads."""
  for k in PROJECT_SETTINGS:
    monkeypatch.delitem(resnet_jax.USER_ENVIRONMENT, k, raising=False)
  monkeypatch.setitem(resnet_jax.USER_ENVIRONMENT, 'MKL_USER_MARKER', 'mine')
  monkeypatch.setenv('MKL_USER_MARKER', 'mine')
  for k, v in PROJECT_SETTINGS.items():
    monkeypatch.setenv(k, v)


PROJECT_SETTINGS = {'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0',
                    'OMP_NUM_THREADS': '1'}


def _assert_clean(env):
  assert env['project_modules'] == []
  assert env['variables'].get('MKL_USER_MARKER') == 'mine'
  assert not set(PROJECT_SETTINGS) & set(env['variables']), env['variables']


def test_the_user_environment_is_read_before_the_package_sets_its_own():
  env = {k: v for k, v in os.environ.items() if k not in PROJECT_SETTINGS}
  out = subprocess.run([sys.executable, '-c', 'import os, resnet_jax; print('
                        "'TF_CPP_MIN_LOG_LEVEL' in resnet_jax.USER_ENVIRONMENT, "
                        "os.environ['TF_CPP_MIN_LOG_LEVEL'], "
                        "os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert out.stdout.split() == ['False', '2', 'None'], out.stderr


def test_the_lessons_keras_program_runs_with_tensorflows_defaults(project_settings):
  saved, seconds = peer_process.run('keras_lesson.py', ['--max_examples=640'])
  assert saved['train_examples'] == 640 and saved['test_examples'] == 640
  assert saved['params'] == 288_202  # The lesson's model, as the docs count it.
  assert saved['fit_seconds'] > 0 and saved['evaluate_seconds'] > 0 and seconds > 0
  env = saved['environment']
  _assert_clean(env)
  if platform.machine() == 'x86_64':  # TensorFlow's default there: its oneDNN kernels on.
    assert env['onednn'] is True
  line = peer_process.describe(env)
  assert line.startswith(f'TensorFlow {env["tensorflow"]} (Keras ')
  assert 'MKL_USER_MARKER=mine' in line and line.endswith('imported: none')


def test_a_failing_peer_raises_its_last_line():
  with pytest.raises(RuntimeError, match='peers/keras_lesson.py failed: .*invalid choice'):
    peer_process.run('keras_lesson.py', ['--data=cifar10'])


torch = pytest.importorskip('torch')


def test_the_pytorch_twin_is_timed_in_a_clean_process(project_settings):
  row = dict(model='resnet8', batch_size=4, steps=2, warmup=1)
  out, _ = peer_process.run('torch_resnet.py', benchmark.torch_args(row) + ['--image_size=8'])
  assert out['torch_step_ms'] > 0 and out['torch_images_per_second'] > 0
  assert out['torch_steps'] == 2 and out['torch_warmup'] == benchmark.TORCH_WARMUP
  env = out['torch_environment']
  _assert_clean(env)
  assert env['torch'].startswith(torch.__version__.split('+')[0])
  assert env['intra_op_threads'] == torch.get_num_threads()  # Its own default.


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
  torch_resnet = _load_peer('torch_resnet')
  model = models.create_model('cifar_resnet', depth=14, num_filters=4, shortcut=shortcut,
                              num_classes=10, scan_blocks=False, conv_impl='xla')
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 12, 12, 3)))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  # Non-trivial statistics, so that the inference-mode comparison reads them.
  stats = jax.tree_util.tree_map(lambda v: v + 0.1 * np.arange(v.shape[-1]),
                                 variables['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': stats}
  net = torch_resnet.CifarResNet(14, shortcut != 'none', width=4, xla_padding=True)
  assert models.count_params(variables['params']) == sum(p.numel() for p in net.parameters())
  _copy_weights(variables, net)
  images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for train in (False, True):  # PyTorch's train mode updates its statistics: eval first.
    net.train(train)
    ours = model.apply(variables, x, train=train, mutable=['batch_stats'])[0]
    with torch.no_grad():
      theirs = net(images).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours), rtol=2e-4, atol=2e-4)


def test_a_row_alternates_with_its_pytorch_twin_and_keeps_the_fastest_rounds(monkeypatch):
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')  # The row's process compiles.
  row = dict(model='resnet8', batch_size=8, remat=False, scan=True, seeds=1, steps=1,
             warmup=0, dtype='float32', conv_impl='fast', cpu_convolutions='eigen')
  out = benchmark.measure(row, torch_max_depth=110, rounds=2)
  assert len(out['step_ms_rounds']) == 2 and out['step_ms'] == min(out['step_ms_rounds'])
  assert len(out['torch_step_ms_rounds']) == 2
  assert out['torch_step_ms'] == min(out['torch_step_ms_rounds'])
  assert out['torch_environment']['project_modules'] == []
  # Past --torch_max_depth, unrolled (its scanned row's twin serves both), or ImageNet's.
  assert benchmark.has_torch_twin(row, 8)
  assert not benchmark.has_torch_twin(row, 6)
  assert not benchmark.has_torch_twin(dict(row, scan=False), 110)
  assert not benchmark.has_torch_twin(dict(row, model='resnet50'), 110)
