"""Bad input is refused before any compilation, with one sentence naming the problem."""

import os
import subprocess
import sys

import pytest

from resnet_jax import config_lib
from resnet_jax import train
from tests.conftest import REPO, override


def config_with(**overrides):
  c = config_lib.base_config()
  c.model.depth = 8
  return override(c, **overrides)


BAD = [
    ({'model.depth': 21}, '6n\\+2'),
    ({'model.shortcut': 'D'}, 'shortcut'),
    ({'model.name': 'vgg'}, "model 'vgg'"),
    ({'model.dtype': 'float8'}, 'dtype'),
    ({'model.shortcut': 'identity'}, 'identity shortcut needs matching shapes'),
    ({'model.name': 'imagenet_resnet', 'model.depth': 50}, 'too small'),
    ({'model.name': 'imagenet_resnet', 'model.depth': 51, 'data.name': 'cifar10'},
     'ImageNet ResNet depth'),
    ({'data.name': 'svhn'}, 'Unknown dataset'),
    ({'data.augment': 'mixup'}, 'data.augment'),
    ({'data.normalize': 'zca'}, 'data.normalize'),
    ({'optimizer.name': 'lion'}, 'optimizer.name'),
    ({'optimizer.schedule': 'exponential'}, 'optimizer.schedule'),
    ({'optimizer.learning_rate': 0.0}, 'learning_rate must be positive'),
    ({'optimizer.learning_rate': -0.1}, 'learning_rate must be positive'),
    ({'optimizer.momentum': 1.5}, 'momentum'),
    ({'batch_size': 0}, 'batch_size must be positive'),
    ({'batch_size': -8}, 'batch_size must be positive'),
    ({'eval_batch_size': 0}, 'eval_batch_size must be positive'),
    ({'num_train_steps': 0, 'num_epochs': 0.0}, 'no length'),
    ({'log_every_steps': 0}, 'log_every_steps'),
    ({'data.validation_size': -2}, r'data.validation_size must be a count .* -1 for the data '
                                   r"set's default \(5000\), got -2"),
    ({'data.name': 'imagenet2012', 'model.name': 'imagenet_resnet', 'model.depth': 18,
      'data.on_device': True}, 'data.on_device applies to in-memory'),
    ({'init_from': '/nonexistent/run'}, 'init_from .* does not exist'),
    ({'seed': -1}, 'seed must be a non-negative integer, got -1'),
    ({'model.num_filters': 0}, 'num_filters'),
    ({'optimizer.schedule': 'piecewise', 'optimizer.decay_factor': -0.1},
     'decay_factor must be positive'),
    ({'optimizer.schedule': 'piecewise', 'optimizer.boundaries': (48000, 32000)},
     r'boundaries must be increasing steps, got \(48000, 32000\)'),
    ({'optimizer.boundaries': ('a,b',)},  # --config.optimizer.boundaries=a,b
     r"boundaries must be steps, as in --config.optimizer.boundaries=32000,48000, got \('a,b',\)"),
    ({'optimizer.schedule': 'piecewise', 'optimizer.boundaries': (32000, 32000)},
     'boundaries must be increasing'),
    ({'optimizer.schedule': 'piecewise', 'optimizer.boundaries': (300, 600),
      'optimizer.warmup_steps': 400}, r'boundaries \(300, 600\) must come after the 400 '
                                      r'warm-up steps'),
    ({'optimizer.warmup_steps': 10, 'optimizer.warmup_kind': 'constant',
      'optimizer.warmup_learning_rate': -0.01}, 'warmup_learning_rate must be positive'),
    ({'optimizer.name': 'adam', 'optimizer.b1': 1.5}, r'optimizer.b1 must be in \[0, 1\)'),
    ({'optimizer.name': 'adamw', 'optimizer.b2': -0.1}, r'optimizer.b2 must be in \[0, 1\)'),
    ({'optimizer.name': 'adam', 'optimizer.eps': 0.0}, 'optimizer.eps must be positive'),
]


@pytest.mark.parametrize('overrides,message', BAD, ids=[str(o) for o, _ in BAD])
def test_bad_config_is_refused(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config_with(**overrides))


def test_a_config_without_a_base_key_is_refused():
  c = config_with()
  del c['optimizer']
  with pytest.raises(config_lib.ConfigError, match="^The config has no 'optimizer': a run "
                     'config starts from config_lib.base_config'):
    config_lib.validate(c)


def test_batch_not_divisible_by_devices_is_refused():
  with pytest.raises(config_lib.ConfigError, match='not divisible by the 3 devices'):
    config_lib.validate(config_with(batch_size=128), device_count=3)


def test_model_keys_that_do_not_fit_the_model_are_refused():
  c = config_with()
  c.model.name = 'seed_resnet'  # Has no depth, shortcut, ...
  with pytest.raises(config_lib.ConfigError, match='does not fit seed_resnet'):
    config_lib.validate(c)
  c = config_with()
  c.model.widths = [16, 32]  # A list (unhashable): checked without the model cache.
  with pytest.raises(config_lib.ConfigError, match='does not fit cifar_resnet'):
    config_lib.validate(c)


def test_the_shipped_configs_are_valid():
  from ml_collections import config_flags
  for name, arg in [('fashion_mnist.py', ''), ('cifar10.py', 'depth=110,plain'),
                    ('seed_mnist.py', ''), ('imagenet_resnet50.py', '')]:
    module = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
        'config', os.path.join(REPO, 'configs', name))
    config_lib.validate(module.get_config(arg))


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(config_lib.ConfigError, match='not writable'):
    train.train_and_evaluate(config_with(), str(blocker / 'run'))


def test_a_workdir_that_is_a_file_or_empty_is_named_as_such(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('kept')
  with pytest.raises(config_lib.ConfigError, match=f'^The workdir {blocker} is a file, not a '
                     'directory: choose another --workdir.$'):
    train.train_and_evaluate(config_with(), str(blocker))
  assert blocker.read_text() == 'kept'
  with pytest.raises(config_lib.ConfigError, match='^--workdir is empty'):
    train.train_and_evaluate(config_with(), '')


def test_settings_that_do_not_fit_the_data_are_refused_before_anything_is_written(
    fashion_data_dir, tmp_path):
  from tests.main_test import small_run_config  # 600 train images, 100 held out.
  big_batch = small_run_config(fashion_data_dir, 2)
  big_batch.batch_size = 512
  no_step = small_run_config(fashion_data_dir, -1)
  no_step.num_epochs = 0.01
  for config, message in [
      (big_batch, r'^batch_size 512 is larger than the 500 training examples of fashion_mnist '
                  r'\(100 held out for validation\): lower batch_size'),
      (no_step, r'^num_epochs 0.01 rounds to 0 steps: an epoch of 500 training examples is '
                r'15 steps of batch 32; train for longer')]:
    workdir = tmp_path / f'run{config.batch_size}'
    with pytest.raises(config_lib.ConfigError, match=message):
      train.train_and_evaluate(config, str(workdir))
    assert os.listdir(workdir) == ['.lock']  # No config.json to stand in a rerun's way.


def test_init_from_a_file_is_named_as_such(tmp_path):
  from resnet_jax import checkpoints
  (tmp_path / 'notes.txt').write_text('not a checkpoint')
  with pytest.raises(checkpoints.CheckpointError, match=r'notes.txt is a file: give a run'):
    checkpoints.resolve_source(str(tmp_path / 'notes.txt'))
  with pytest.raises(checkpoints.CheckpointError, match=r'nope does not exist: give a run'):
    checkpoints.resolve_source(str(tmp_path / 'nope'))


def test_a_url_workdir_is_refused_instead_of_written_to_a_local_gs_directory(tmp_path):
  """Runs write with local file calls: a gs:// workdir became a local `gs:` directory on
  the VM, and init_from a bucket was reported missing."""
  config = os.path.join(REPO, 'configs')
  for module, extra in (('resnet_jax.main', f'--config={config}/fashion_mnist.py'),
                        ('experiments.depth_ablation', f'--config={config}/ablation.py:quick')):
    out = subprocess.run([sys.executable, '-m', module, extra, '--workdir=gs://bucket/run'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        'error: --workdir=gs://bucket/run is a URL, and runs write only to directories: '
        'give a local path, or a bucket mounted as a directory (Cloud Storage FUSE) or a '
        'shared filesystem that every host sees.'], (module, out.stderr[-2000:])
    assert not os.listdir(tmp_path), module
  with pytest.raises(config_lib.ConfigError, match=r'^init_from gs://bucket/run is a URL'):
    train.train_and_evaluate(config_with(init_from='gs://bucket/run'), str(tmp_path / 'r'))
  assert not os.path.exists(tmp_path / 'r')


def cli(*args):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_refuses_bad_values_in_one_line(tmp_path):
  out = cli('--config=configs/fashion_mnist.py', f'--workdir={tmp_path}',
            '--config.model.depth=21')
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'depth' in last and '6n+2' in last
  assert not os.listdir(tmp_path)  # Nothing written.


STRAY_WORDS = [
    ('resnet_jax.main', ['--config=configs/fashion_mnist.py', '--workdir=WORKDIR', 'extra']),
    ('experiments.depth_ablation', ['--config=configs/ablation.py:quick', '--workdir=WORKDIR',
                                    '--dry_run', 'extra']),
    ('experiments.report', ['--workdir=WORKDIR', 'extra']),
    ('experiments.compare_cells', ['--cells=WORKDIR/a,WORKDIR/b', 'extra']),
    ('experiments.benchmark', ['--output=WORKDIR/b.json', '--models', 'resnet8', 'extra']),
]


@pytest.mark.parametrize('module,args', STRAY_WORDS, ids=[m for m, _ in STRAY_WORDS])
def test_every_command_refuses_words_that_are_not_flags(module, args, tmp_path):
  # `--models a b` keeps `a`; absl leaves `b` over, which was silently dropped.
  workdir = tmp_path / 'out'
  out = subprocess.run([sys.executable, '-m', module,
                        *[a.replace('WORKDIR', str(workdir)) for a in args]],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
      "error: unexpected arguments 'extra': flags take one value each (--flag=VALUE), and "
      'lists are comma-separated (--models=a,b).'], out.stderr[-2000:]
  assert not workdir.exists()


BAD_PROCESS_FLAGS = [
    (['--num_processes=2', '--process_id=0'],
     '--num_processes and --process_id join a multi-process run only with '
     "--coordinator_address=HOST:PORT (process 0's); on TPU VMs and SLURM pass "
     '--distributed instead.'),
    (['--coordinator_address=localhost', '--num_processes=2', '--process_id=0'],
     "--coordinator_address 'localhost' is not HOST:PORT: give process 0's address and a "
     'free port, as in 10.0.0.1:1234.'),
    (['--coordinator_address=127.0.0.1:1234', '--num_processes=2'],
     '--coordinator_address needs --num_processes (how many) and --process_id (this one, '
     '0 to num_processes - 1).'),
    (['--coordinator_address=127.0.0.1:1234', '--num_processes=2', '--process_id=2'],
     '--process_id 2 must be in [0, --num_processes 2).'),
]


@pytest.mark.parametrize('flags,message', BAD_PROCESS_FLAGS,
                         ids=[' '.join(f) for f, _ in BAD_PROCESS_FLAGS])
def test_cli_refuses_multi_process_flags_that_cannot_work(flags, message, tmp_path):
  out = cli('--config=configs/fashion_mnist.py', f'--workdir={tmp_path / "run"}', *flags)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [f'error: {message}']
  assert not (tmp_path / 'run').exists()


def test_cli_names_an_override_of_a_key_the_config_lacks(tmp_path):
  out = cli('--config=configs/fashion_mnist.py', f'--workdir={tmp_path}',
            '--config.seed=1', '--config.model.depht=20')
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines() == [
      'error: --config.model.depht sets a key the config does not have (Did you mean '
      '"depth"?); check its spelling against the config file (the command line can change '
      'the keys a config has, not add new ones).']
  assert not os.listdir(tmp_path)


WRONG_TYPES = [
    ('resnet_jax.main', '--config=configs/fashion_mnist.py', '--config.batch_size=lots',
     'error: --config.batch_size=lots: batch_size takes a whole number (the config has 64).'),
    ('resnet_jax.main', '--config=configs/cifar10.py', '--config.data.on_device=maybe',
     'error: --config.data.on_device=maybe: data.on_device takes true or false (the config '
     'has False).'),
    ('experiments.depth_ablation', '--config=configs/ablation.py:quick',
     '--config.overrides.num_epochs=2x', 'error: --config.overrides.num_epochs=2x: '
     'overrides.num_epochs takes a number.'),
]


@pytest.mark.parametrize('module,config,flag,message', WRONG_TYPES,
                         ids=[f for _, _, f, _ in WRONG_TYPES])
def test_cli_refuses_a_value_of_the_wrong_type_in_one_line(module, config, flag, message,
                                                           tmp_path):
  out = subprocess.run([sys.executable, '-m', module, config, f'--workdir={tmp_path}/out',
                        flag], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [message], out.stderr
  assert not os.listdir(tmp_path)


def test_config_arguments_are_checked():
  assert config_lib.parse_arg('depth=56,plain', ('plain',), ('depth',), ints=('depth',)) == {
      'depth': 56, 'plain': True}
  with pytest.raises(ValueError, match="argument 'depth=abc' needs an integer"):
    config_lib.parse_arg('depth=abc', values=('depth',), ints=('depth',))


# A config file that cannot be found or called, or a bad argument to one: one line, exit 1.
BAD_CONFIG_FILES = [
    ('resnet_jax.main', ['--config=configs/nope.py'],
     "error: --config: there is no config file 'configs/nope.py' (relative paths start at "),
    ('resnet_jax.main', ['--config', 'configs/nope.py:depth=8', '--config.seed=1'],
     "error: --config: there is no config file 'configs/nope.py'"),
    ('resnet_jax.main', ['--config=configs/fashion_mnist.py:depth=abc'],
     "error: --config=configs/fashion_mnist.py:depth=abc: The config argument 'depth=abc' "
     'needs an integer, as in depth=56.'),
    ('resnet_jax.main', ['--config=NO_GET_CONFIG'],
     "error: --config: 'NO_GET_CONFIG' has no get_config(arg) function"),
    ('resnet_jax.main', ['--config=configs/ablation.py:quick'],
     'error: This is a depth-ablation config (configs/ablation.py): run it with python -m '
     'experiments.depth_ablation'),
    ('experiments.depth_ablation', ['--config=configs/fashion_mnist.py'],
     'error: This is the config of a single run: the sweep takes configs/ablation.py:PRESET'),
    ('experiments.depth_ablation', ['--config=configs/ablation.py:bogus'],
     "error: --config=configs/ablation.py:bogus: Unknown ablation preset 'bogus': use one of "
     'quick, full, paper, extreme, imagenet, normalisation, normalisation_full.'),
    ('experiments.depth_ablation', ['--config=configs/ablation.py:quick',
                                    '--config.paper_table=cifar100'],
     "error: paper_table='cifar100' is not a table of the paper here: use one of cifar10, "
     "imagenet, or '' for none."),
]


@pytest.mark.parametrize('module,args,start', BAD_CONFIG_FILES,
                         ids=[' '.join(a) for _, a, _ in BAD_CONFIG_FILES])
def test_cli_refuses_a_bad_config_file_in_one_line(module, args, start, tmp_path):
  no_get_config = tmp_path / 'no_get_config.py'
  no_get_config.write_text('config = None\n')
  args = [a.replace('NO_GET_CONFIG', str(no_get_config)) for a in args]
  start = start.replace('NO_GET_CONFIG', str(no_get_config))
  workdir = tmp_path / 'run'
  out = subprocess.run([sys.executable, '-m', module, *args, f'--workdir={workdir}'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(start), lines
  if 'nope.py' in start:  # The message names the shipped config files.
    assert os.path.join(REPO, 'configs', 'fashion_mnist.py') in lines[0]
  assert not workdir.exists()
