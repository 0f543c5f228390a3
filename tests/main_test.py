"""End to end: train_and_evaluate on real Fashion-MNIST, resume, the command line."""

import glob
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import metrics_io
from resnet_jax import train
from resnet_jax import trainer as trainer_lib
from resnet_jax import signals
from resnet_jax import seeds
from tests.conftest import REPO
from tests.train_test import tiny_config

SMALL = ['--config.model.depth=8', '--config.model.num_filters=4', '--config.batch_size=32',
         '--config.eval_batch_size=100', '--config.data.validation_size=100',
         '--config.log_every_steps=2']


def small_run_config(data_dir, steps):
  c = tiny_config(**{'data.data_dir': data_dir, 'data.validation_size': 100,
                     'data.augment': 'crop_flip', 'batch_size': 32,
                     'eval_batch_size': 100, 'log_every_steps': 2,
                     'eval_every_steps': 2, 'checkpoint_every_steps': 2})
  c.num_train_steps = steps
  return c


def tensorboard_view(workdir):
  """What TensorBoard shows of `workdir`, read by its own loader: {tag: [(step, value)]}
  of the scalars, and the HParams view's {name: value}."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
             for tag in acc.Tags()['scalars']}
  info = metadata.parse_session_start_info_plugin_data(
      acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
  hparams = {k: getattr(v, v.WhichOneof('kind')) for k, v in info.hparams.items()}
  return scalars, hparams


def tensorboard_matches_metrics(workdir):
  """Whether TensorBoard's scalars are metrics.jsonl's records (float32-rounded)."""
  scalars, _ = tensorboard_view(workdir)
  logged = {}
  for r in metrics_io.read_records(workdir):
    for k, v in r.items():
      if k not in ('step', 'split', 'time'):
        logged.setdefault(f'{r["split"]}/{k}', []).append((r['step'], np.float32(v)))
  return scalars == logged


def test_train_and_evaluate_writes_everything_and_resumes(fashion_data_dir, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(small_run_config(fashion_data_dir, 4), workdir)
  assert 0.0 <= result['test']['accuracy'] <= 1.0
  out = capsys.readouterr().out
  assert 'img/s' in out and 'ETA' in out and 'test accuracy' in out
  records = metrics_io.read_records(workdir)
  splits = {r['split'] for r in records}
  assert {'train', 'validation', 'test', 'run'} <= splits
  train_steps = [r['step'] for r in records if r['split'] == 'train']
  assert train_steps == [2, 4]
  first = [r for r in records if r['split'] == 'train'][0]
  for key in ('loss', 'accuracy', 'learning_rate', 'grad_norm', 'param_norm',
              'images_per_second'):
    assert key in first
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 4
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']

  # Asking for more steps resumes from step 4, not from scratch.
  train.train_and_evaluate(small_run_config(fashion_data_dir, 6), workdir,
                           allow_config_change=True)
  assert 'Resumed from the checkpoint of step 4' in capsys.readouterr().out
  train_steps = [r['step'] for r in metrics_io.read_records(workdir) if r['split'] == 'train']
  assert train_steps == [2, 4, 6]
  # TensorBoard, reading its two events files, shows the same numbers, and the config.
  scalars, hparams = tensorboard_view(workdir)
  assert [step for step, _ in scalars['train/loss']] == [2, 4, 6]
  assert tensorboard_matches_metrics(workdir)
  assert (hparams['model.depth'], hparams['data.name'], hparams['batch_size']) == (
      8, 'fashion_mnist', 32)

  # The same command again, once finished: the logged results, and nothing rewritten.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = f.read()
  files = sorted(os.listdir(workdir))
  again = train.train_and_evaluate(small_run_config(fashion_data_dir, 6), workdir)
  out = capsys.readouterr().out
  assert 'finished its 6 steps already' in out and 'Compiled' not in out
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert f.read() == logged
  assert sorted(os.listdir(workdir)) == files  # No second TensorBoard events file.
  test = [r for r in metrics_io.read_records(workdir) if r['split'] == 'test'][-1]
  assert again['test']['accuracy'] == test['accuracy'] and int(again['state'].step) == 6


def test_a_run_that_holds_nothing_out_evaluates_the_test_split_only(fashion_data_dir,
                                                                    tmp_path, capsys):
  config = small_run_config(fashion_data_dir, 4)  # Evaluates every 2 steps.
  config.data.validation_size = 0
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert set(result) == {'test', 'state'}
  records = metrics_io.read_records(str(tmp_path / 'run'))
  assert [r['split'] for r in records] == ['train', 'train', 'test', 'run']
  run = records[-1]  # Its times: steps, compilation and evaluation apart.
  assert run['train_seconds'] > 0 and run['compile_seconds'] > 0 and run['eval_seconds'] > 0
  out = capsys.readouterr().out
  assert 'fashion_mnist 600/0/600;' in out
  assert re.search(r'^Final \(step 4\): test accuracy [0-9.]+, test loss', out, re.M), out


@pytest.mark.parametrize('final_step,kept', [
    (4, [(2, 'train'), (2, 'validation'), (4, 'train')]),  # Killed in its final evaluation.
    (6, [(2, 'train'), (2, 'validation'), (4, 'train'), (4, 'validation'), (4, 'test')]),
])
def test_resuming_drops_the_records_of_the_attempt_that_died(tmp_path, final_step, kept):
  rows = [(2, 'train'), (2, 'validation'), (4, 'train'), (4, 'validation'), (4, 'test'),
          (5, 'train')]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps({'step': step, 'split': split, 'loss': 1.0}) + '\n'
                 for step, split in rows)
    f.write('{"step": 6, "spl')  # A line cut short by the kill.
  metrics_io.MetricsLog(str(tmp_path), resume_step=4, final_step=final_step).close()
  assert [(r['step'], r['split']) for r in metrics_io.read_records(str(tmp_path))] == kept


def run_cli(args, env_extra=None):
  # Without the TensorFlow quieting this process got from importing JAX and resnet_jax:
  # the command line must keep TensorFlow quiet by itself.
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(JAX_DISABLE_MOST_OPTIMIZATIONS='1', **(env_extra or {}))
  return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def test_command_line_end_to_end(fashion_data_dir, tmp_path):
  workdir = str(tmp_path / 'cli')
  out = run_cli(['--config=configs/fashion_mnist.py:depth=8,plain', f'--workdir={workdir}',
                 f'--config.data.data_dir={fashion_data_dir}',
                 '--config.num_train_steps=3', *SMALL])
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Final (step 3)' in out.stdout
  # No start-up notices: TensorFlow's oneDNN one, TFDS's of a folder that is not there.
  assert 'oneDNN' not in out.stderr and 'Variant folder' not in out.stderr, out.stderr
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['model']['shortcut'] == 'none' and config['model']['depth'] == 8


@pytest.mark.parametrize('config_file', ['cifar10.py:depth=56,plain', 'seed_mnist.py',
                                         'seed_mnist.py:mnist', 'imagenet_resnet50.py',
                                         'fashion_mnist.py'])
def test_every_config_file_loads(config_file):
  from ml_collections import config_flags
  path, _, arg = config_file.partition(':')
  module = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      'config', os.path.join(REPO, 'configs', path))
  c = module.get_config(arg) if arg else module.get_config()
  assert c.data.name in ('cifar10', 'fashion_mnist', 'mnist', 'imagenet2012')
  if config_file.startswith('cifar10'):
    assert (c.model.depth, c.model.shortcut, c.num_train_steps) == (56, 'none', 64000)


def test_mistyped_config_key_fails_clearly(tmp_path):
  out = run_cli(['--config=configs/fashion_mnist.py', f'--workdir={tmp_path}',
                 '--config.model.dpeth=8'])
  assert out.returncode != 0
  assert 'dpeth' in out.stderr


def test_unknown_config_argument_fails_clearly(tmp_path):
  out = run_cli(['--config=configs/cifar10.py:depth=56,plian', f'--workdir={tmp_path}'])
  assert out.returncode != 0
  assert "Unknown config argument 'plian'" in out.stderr


def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_the_same_command_continues(
    fashion_data_dir, tmp_path):
  import signal
  workdir = str(tmp_path / 'preempted')
  # `python -m resnet_jax.main` with Python's Ctrl-C handler as in a terminal (a test
  # runner started in the background may pass SIGINT on ignored).
  main_as_in_a_terminal = (
      'import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); '
      'runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)')
  args = [sys.executable, '-c', main_as_in_a_terminal, '--config=configs/fashion_mnist.py',
          f'--workdir={workdir}', f'--config.data.data_dir={fashion_data_dir}',
          '--config.num_train_steps=100', '--config.checkpoint_every_steps=0', *SMALL]
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')

  def stop_with(signum, after):
    """Starts the command and sends `signum` once it logs a step past `after`."""
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
      lines.append(line)
      logged = re.match(r'step (\d+)/', line)  # A progress line, not an evaluation's.
      if logged and int(logged.group(1)) > after:
        proc.send_signal(signum)
        break
    out, err = proc.communicate(timeout=300)
    out = ''.join(lines) + out
    name = signal.Signals(signum).name
    assert proc.returncode == 0 and f'Stopped by {name} after step' in out, err[-3000:]
    stopped = int(out.split(f'Stopped by {name} after step ')[1].split(':')[0])
    assert after < stopped < 100
    assert str(stopped) in os.listdir(os.path.join(workdir, 'checkpoints'))
    return stopped, out

  stopped, _ = stop_with(signal.SIGTERM, 0)  # A preemptible VM's notice.
  stopped_again, out = stop_with(signal.SIGINT, stopped)  # Ctrl-C, once.
  assert f'Resumed from the checkpoint of step {stopped}' in out
  again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {stopped_again}' in again.stdout
  assert 'Final (step 100)' in again.stdout
  steps = [r['step'] for r in metrics_io.read_records(workdir) if r['split'] == 'train']
  assert steps == list(range(2, 101, 2))  # No extra line at the stop: resume is exact.


def test_the_host_stays_a_step_ahead_so_a_sigterm_stops_the_run_at_once(
    fashion_data_dir, tmp_path, monkeypatch):
  """A slow device step must not let the host queue the steps after it, else a SIGTERM
  waits for the whole queue (up to the next log step) before the run stops.

  The fourth step's batch depends on a slow computation still running on the device;
  SIGTERM comes 0.2 s later. The run must stop by the fifth step, not at the 40th.
  """
  import signal
  import threading
  import time
  slow_step, calls, seen = 3, [], {'queued': 0}

  @jax.jit
  def slow(x):  # Seconds of matrix products on 2 cores.
    return jax.lax.fori_loop(0, 1000, lambda i, a: jnp.tanh(a @ a), x)

  def delay(batch, until):
    return jax.tree_util.tree_map(
        lambda x: jax.jit(lambda x, u: x + (0 * u).astype(x.dtype),
                          out_shardings=x.sharding)(x, until), batch)

  def sigterm_soon(until):
    time.sleep(0.2)
    seen['slow_step_still_running'] = not until.is_ready()
    if signal.getsignal(signal.SIGTERM) is not outside_the_run:  # Never kill pytest.
      os.kill(os.getpid(), signal.SIGTERM)

  to_device = trainer_lib.Trainer.to_device

  def feed(self, batch, train=False):
    batch = to_device(self, batch, train)
    if train:
      calls.append(1)
      if 'until' in seen and not seen['until'].is_ready():
        seen['queued'] += 1  # Fed while the slow step has not run yet.
      if len(calls) == slow_step + 2:  # The first call only lowers the step.
        slow_x = jnp.full((512, 512), 0.01)
        seen['until'] = until = jnp.sum(slow(slow_x))
        batch = delay(batch, until)
        threading.Thread(target=sigterm_soon, args=(until,), daemon=True).start()
    return batch

  assert threading.current_thread() is threading.main_thread()  # Where SIGTERM is caught.
  outside_the_run = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(trainer_lib.Trainer, 'to_device', feed)
  config = small_run_config(fashion_data_dir, 40)
  config.log_every_steps = config.num_train_steps
  config.eval_every_steps = config.checkpoint_every_steps = 0
  result = train.train_and_evaluate(config, str(tmp_path / 'slow'))
  assert seen['slow_step_still_running'], 'the slow computation ended before the signal'
  assert 'stopped_at' in result, f'the SIGTERM stopped nothing ({seen["queued"]} steps queued)'
  assert result['stopped_at'] <= slow_step + 2, f'{seen["queued"]} steps were queued'
  assert seen['queued'] <= 1


def test_a_seed_that_diverges_in_a_group_keeps_its_record_through_a_stop(
    fashion_data_dir, tmp_path, monkeypatch):
  """One seed of a vmapped pair turns NaN (its initial weights made NaN), the other trains
  on; a SIGTERM later stops the pair, and the diverged seed is still reported diverged (the
  sweep writes its diverged.json from that), not as stopped, to be trained again."""
  init, made = trainer_lib.Trainer.init_state, []

  def init_state(self, rng):
    state = init(self, rng)
    made.append(state)
    if len(made) == 2:  # The pair's second seed.
      state = state.replace(params=jax.tree_util.tree_map(lambda p: p * jnp.nan,
                                                          state.params))
    return state

  def sigterm_at_step_6(self, steps_run):
    if steps_run >= 6:  # (From step 0.)
      self.received = 'SIGTERM'
    return self.received is not None

  monkeypatch.setattr(trainer_lib.Trainer, 'init_state', init_state)
  monkeypatch.setattr(signals.StopSignal, 'should_stop', sigterm_at_step_6)
  dirs = {0: str(tmp_path / 'a'), 1: str(tmp_path / 'b')}
  result = seeds.train_seeds(small_run_config(fashion_data_dir, 10), dirs)
  assert result[1]['diverged_at'] == 2 and 'lower the learning rate' in result[1]['message']
  assert result[0]['stopped_at'] == 6
  steps = [r['step'] for r in metrics_io.read_records(dirs[0]) if r['split'] == 'train']
  assert steps == [2, 4, 6]
  assert not os.path.exists(os.path.join(dirs[1], 'metrics.jsonl'))  # No NaN logged.


def test_data_on_device_trains_exactly_as_data_from_the_host(fashion_data_dir, tmp_path):
  runs = {}
  for on_device in (False, True):
    config = small_run_config(fashion_data_dir, 4)
    config.data.on_device = on_device
    workdir = str(tmp_path / f'on_device_{on_device}')
    train.train_and_evaluate(config, workdir)
    runs[on_device] = [{k: v for k, v in r.items()
                        if k not in ('time', 'steps_per_second', 'images_per_second')}
                       for r in metrics_io.read_records(workdir) if r['split'] != 'run']
  assert runs[True] == runs[False]


def test_seeds_trained_together_follow_their_single_seed_runs(fashion_data_dir, tmp_path):
  """jax.vmap over seeds: each seed's run equals its own single-seed run to tolerance."""
  config = small_run_config(fashion_data_dir, 6)
  together = seeds.train_seeds(config, {0: str(tmp_path / 'v0'), 1: str(tmp_path / 'v1')})
  for seed in (0, 1):
    single = small_run_config(fashion_data_dir, 6)
    single.seed = seed
    alone = train.train_and_evaluate(single, str(tmp_path / f's{seed}'))
    for a, b in zip(jax.tree_util.tree_leaves(together[seed]['state'].params),
                    jax.tree_util.tree_leaves(alone['state'].params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rows = {}
    for name in (f'v{seed}', f's{seed}'):
      rows[name] = [(r['step'], r['split'], r['loss'], r['accuracy'])
                    for r in metrics_io.read_records(str(tmp_path / name))
                    if r['split'] in ('train', 'validation', 'test')]
    assert [r[:2] for r in rows[f'v{seed}']] == [r[:2] for r in rows[f's{seed}']]
    np.testing.assert_allclose([r[2:] for r in rows[f'v{seed}']],
                               [r[2:] for r in rows[f's{seed}']], rtol=1e-4, atol=1e-6)
    with open(tmp_path / f'v{seed}' / 'config.json') as f:
      assert json.load(f)['seed'] == seed
  # The two seeds are different runs.
  assert together[0]['test']['loss'] != together[1]['test']['loss']


def test_seeds_trained_together_resume_together(fashion_data_dir, tmp_path, capsys):
  dirs = {0: str(tmp_path / 'a'), 1: str(tmp_path / 'b')}
  seeds.train_seeds(small_run_config(fashion_data_dir, 4), dirs)
  longer = small_run_config(fashion_data_dir, 6)
  result = seeds.train_seeds(longer, dirs, allow_config_change=True)
  assert 'Resumed from the checkpoint of step 4' in capsys.readouterr().out
  for seed, workdir in dirs.items():
    steps = [r['step'] for r in metrics_io.read_records(workdir) if r['split'] == 'train']
    assert steps == [2, 4, 6] and np.isfinite(result[seed]['test']['loss'])
