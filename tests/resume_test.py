"""Exact resume after SIGKILL, determinism, checkpoints refused clearly, config memory."""

import logging
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_jax import checkpoints
from resnet_jax import config_lib
from resnet_jax import metrics_io
from resnet_jax import run_dir
from resnet_jax import train
from tests.conftest import REPO
from tests.main_test import small_run_config
from tests.main_test import tensorboard_matches_metrics

TIMING_KEYS = {'time', 'steps_per_second', 'images_per_second'}
STEPS = 160
ARGS = ['--config=configs/fashion_mnist.py', '--config.model.depth=8',
        '--config.model.num_filters=4', '--config.batch_size=16',
        '--config.eval_batch_size=100', '--config.data.validation_size=100',
        '--config.data.augment=crop_flip', f'--config.num_train_steps={STEPS}',
        '--config.log_every_steps=7', '--config.eval_every_steps=50',
        '--config.checkpoint_every_steps=10', '--config.checkpoints_to_keep=3']
ENV = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')


def command(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'resnet_jax.main', f'--workdir={workdir}', *ARGS,
          f'--config.data.data_dir={data_dir}', *extra]


def kill_after(cmd, step):
  """Starts `cmd` and SIGKILLs it once it reports training step >= `step`."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith('step ') and int(line.split()[1].split('/')[0].rstrip(':')) >= step:
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=300)
  return proc.returncode


def finish(cmd):
  out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def comparable_metrics(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in metrics_io.read_records(workdir) if r['split'] != 'run']


def final_arrays(workdir):
  mngr = checkpoints.manager(workdir)
  step = mngr.latest_step()
  tree = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, jax.tree_util.tree_leaves(tree['state'])


def test_sigkill_at_any_point_then_the_same_command_gives_identical_results(
    fashion_data_dir, tmp_path):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  finish(command(straight, fashion_data_dir))

  cmd = command(killed, fashion_data_dir)
  assert kill_after(cmd, 1) == -signal.SIGKILL  # Before its first checkpoint.
  assert kill_after(cmd, 40) == -signal.SIGKILL  # Mid-run, between checkpoints.
  # Saving every step, a kill lands while a checkpoint is being written.
  assert kill_after(cmd + ['--config.checkpoint_every_steps=1'], 60) == -signal.SIGKILL
  ckpt_dir = os.path.join(killed, 'checkpoints')
  resumed_from = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert 40 <= resumed_from < STEPS
  out = finish(cmd)
  assert f'Resumed from the checkpoint of step {resumed_from}' in out

  assert comparable_metrics(killed) == comparable_metrics(straight)
  # TensorBoard shows the same: the killed attempts' events past the checkpoint it
  # resumed from are dropped.
  assert tensorboard_matches_metrics(killed)
  run_record = lambda w: [r for r in metrics_io.read_records(w) if r['split'] == 'run'][-1]
  assert run_record(straight)['first_step'] == 0
  assert run_record(killed)['first_step'] == resumed_from  # Its train_seconds start there.
  step_a, leaves_a = final_arrays(straight)
  step_b, leaves_b = final_arrays(killed)
  assert step_a == step_b == STEPS and len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # Bitwise.


def test_a_run_resumed_with_other_threads_is_not_bitwise_the_same_run(
    fashion_data_dir, tmp_path):
  """oneDNN's weight gradients sum in an order that depends on its OpenMP threads: a run
  resumed with another OMP_NUM_THREADS (a sweep resumed with another --parallel) is not
  bitwise the same run: its rounding differs and drifts (losses within a percent here),
  and its run record says the threads it finished on."""
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  steps = ['--config.num_train_steps=24', '--config.eval_every_steps=0']
  env = lambda threads: dict(ENV, OMP_NUM_THREADS=str(threads))
  out = subprocess.run(command(straight, fashion_data_dir, *steps), cwd=REPO, env=env(2),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  cmd = command(resumed, fashion_data_dir, *steps)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith('step ') and int(line.split()[1].split('/')[0]) >= 12:
      proc.send_signal(signal.SIGTERM)  # A checkpoint, then a stop: the resume is certain.
      break
  proc.communicate(timeout=300)
  out = subprocess.run(cmd, cwd=REPO, env=env(2), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0 and 'Resumed from the checkpoint of step ' in out.stdout
  run_record = lambda w: [r for r in metrics_io.read_records(w) if r['split'] == 'run'][-1]
  assert run_record(straight)['onednn_threads'] == run_record(resumed)['onednn_threads'] == 2
  a, b = comparable_metrics(straight), comparable_metrics(resumed)
  assert [(r['step'], r['split']) for r in a] == [(r['step'], r['split']) for r in b]
  for x, y in zip(a, b):
    assert x['loss'] == pytest.approx(y['loss'], rel=1e-2), (x, y)
  _, leaves_a = final_arrays(straight)
  _, leaves_b = final_arrays(resumed)
  assert any(not np.array_equal(p, q) for p, q in zip(leaves_a, leaves_b))  # Not bitwise.


def test_same_seed_gives_identical_metrics_and_another_seed_differs(fashion_data_dir,
                                                                    tmp_path):
  runs = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    config = small_run_config(fashion_data_dir, 6)
    config.seed = seed
    train.train_and_evaluate(config, str(tmp_path / name))
    runs[name] = comparable_metrics(str(tmp_path / name))
  assert runs['a'] == runs['b']
  losses = lambda r: [m['loss'] for m in r if m['split'] == 'train']
  assert all(x != y for x, y in zip(losses(runs['a']), losses(runs['c'])))


def test_a_workdir_refuses_another_config_unless_asked(fashion_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(small_run_config(fashion_data_dir, 2), workdir)
  other = small_run_config(fashion_data_dir, 2)
  other.optimizer.learning_rate = 0.5
  with pytest.raises(config_lib.ConfigError,
                     match=r'another config \(optimizer.learning_rate: 0.1 -> 0.5\).*'
                           r'--allow_config_change'):
    train.train_and_evaluate(other, workdir)
  # How often to log or save is not a different experiment.
  same = small_run_config(fashion_data_dir, 2)
  same.log_every_steps = 1
  train.train_and_evaluate(same, workdir)
  # Asked explicitly: continues, and the old config is kept beside the new one.
  other.num_train_steps = 4
  train.train_and_evaluate(other, workdir, allow_config_change=True)
  kept = [f for f in os.listdir(workdir) if f.startswith('config.') and f != 'config.json']
  assert len(kept) == 1


def test_a_second_run_in_a_busy_workdir_is_refused_and_the_first_goes_on(fashion_data_dir,
                                                                         tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = command(workdir, fashion_data_dir, '--config.num_train_steps=100000')
  first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
  try:
    for line in first.stdout:
      if line.startswith('step '):  # Training.
        break
    second = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert first.poll() is None  # Still training, undisturbed.
  finally:
    first.kill()
    first.communicate()
  assert second.returncode == 1, second.stderr[-2000:]
  assert second.stderr.strip().splitlines()[-1] == (
      f'error: Another process (pid {first.pid}) is running in {workdir}: wait for it to '
      f'end or stop it, or choose another --workdir.')
  # The killed run's hold went with it.
  with run_dir.exclusive([workdir]):
    pass


def test_cli_refuses_another_config_in_one_line(fashion_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  config = small_run_config(fashion_data_dir, 2)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write('{"step": 2, "split": "train", "loss": 2.3}\n')  # A result of that config.
  out = subprocess.run(command(workdir, fashion_data_dir), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: The workdir') and 'another config' in last
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_an_attempt_that_kept_nothing_leaves_its_workdir_to_the_corrected_command(
    fashion_data_dir, tmp_path, capsys):
  """A hold-out of the whole training split is refused in one line before anything is
  written; a run killed before its first log line or checkpoint (its learning rate seen
  to be wrong, say) kept nothing, so the corrected command needs no
  --allow_config_change there. Once a run has kept something, another config is refused."""
  workdir = str(tmp_path / 'run')
  cmd = [a.replace('validation_size=100', 'validation_size=600')
         for a in command(workdir, fashion_data_dir)]
  out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
      'error: data.validation_size 600 does not fit the 600 training examples of '
      'fashion_mnist: hold out fewer (0 for none), or -1 for its default of 5000.')
  assert os.listdir(workdir) == ['.lock']
  # Logs, evaluates and saves only at its end: killed once it starts, it has kept nothing.
  quiet = {'log_every_steps=7': 'log_every_steps=1000', 'eval_every_steps=50':
           'eval_every_steps=0', 'checkpoint_every_steps=10': 'checkpoint_every_steps=1000'}
  cmd = command(workdir, fashion_data_dir)
  for old, new in quiet.items():
    cmd = [a.replace(old, new) for a in cmd]
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith('cifar_resnet'):  # Its model and data, before it compiles.
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=300)
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert not run_dir.holds_results(workdir)
  train.train_and_evaluate(small_run_config(fashion_data_dir, 2), workdir)
  assert 'kept no checkpoint or metrics of its earlier attempt' in capsys.readouterr().out
  kept = [f for f in os.listdir(workdir) if f.startswith('config.') and f != 'config.json']
  assert len(kept) == 1 and run_dir.holds_results(workdir)
  other = small_run_config(fashion_data_dir, 2)
  other.optimizer.learning_rate = 0.5
  with pytest.raises(config_lib.ConfigError, match='another config'):
    train.train_and_evaluate(other, workdir)


def corrupt(step_dir):
  """Overwrites every array file of a checkpoint with junk of the same size."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'wb') as f:
        f.write(b'\x07' * max(size, 16))


def snapshot(directory):
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'rb') as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return out


def test_a_corrupt_checkpoint_is_refused_and_left_alone(fashion_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(small_run_config(fashion_data_dir, 4), workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  corrupt(os.path.join(ckpt_dir, '4'))
  before = snapshot(ckpt_dir)
  config = small_run_config(fashion_data_dir, 6)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'checkpoint of step 4 .* cannot be read .*move that step'):
    train.train_and_evaluate(config, workdir, allow_config_change=True)
  assert snapshot(ckpt_dir) == before


def test_a_truncated_checkpoint_is_one_line_naming_an_array(fashion_data_dir, tmp_path):
  # Orbax gives up at the first bad array with others still being read; their reports
  # (tracebacks of 'Event loop is closed' and their own errors) must not follow the line.
  workdir = str(tmp_path / 'run')
  finish(command(workdir, fashion_data_dir, '--config.num_train_steps=10'))
  arrays = os.path.join(workdir, 'checkpoints', '10', 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(arrays):
    os.truncate(os.path.join(arrays, name), 100)
  out = subprocess.run(command(workdir, fashion_data_dir, '--config.num_train_steps=20',
                               '--allow_config_change'),
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.count('\n') == 1, out.stderr[-3000:]
  assert re.fullmatch(r"error: The checkpoint of step 10 in \S+ cannot be read \(reading array "
                      r"[\w.]+ fails\): move that step directory away .*\n", out.stderr), out.stderr


def test_a_checkpoint_of_another_model_is_refused(fashion_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(small_run_config(fashion_data_dir, 2), workdir)
  wider = small_run_config(fashion_data_dir, 4)
  wider.model.num_filters = 8
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'belongs to another model: .* has shape \(16, 10\) there '
                           r'but \(32, 10\)'):
    train.train_and_evaluate(wider, workdir, allow_config_change=True)
  deeper = small_run_config(fashion_data_dir, 4)
  deeper.model.depth = 14
  deeper.model.scan_blocks = False
  with pytest.raises(checkpoints.CheckpointError, match='belongs to another model: it has no'):
    train.train_and_evaluate(deeper, workdir, allow_config_change=True)


def test_a_run_can_start_from_another_runs_weights(fashion_data_dir, tmp_path, capsys,
                                                   caplog):
  source = str(tmp_path / 'source')
  first = train.train_and_evaluate(small_run_config(fashion_data_dir, 4), source)
  config = small_run_config(fashion_data_dir, 2)
  config.init_from = source
  trainer_state = first['state']
  caplog.clear()
  warm = checkpoints.load_weights(source, trainer_state.replace(
      params=jax.tree_util.tree_map(jnp.zeros_like, trainer_state.params)))
  # Orbax says nothing of the checkpoint's other item (the un-logged metrics).
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  for a, b in zip(jax.tree_util.tree_leaves(warm.params),
                  jax.tree_util.tree_leaves(trainer_state.params)):
    np.testing.assert_array_equal(a, b)
  train.train_and_evaluate(config, str(tmp_path / 'warm'))
  assert f'Starting from the weights of {source}' in capsys.readouterr().out

  wider = small_run_config(fashion_data_dir, 2)
  wider.model.num_filters = 8
  wider.init_from = os.path.join(source, 'checkpoints', '4')
  with pytest.raises(checkpoints.CheckpointError, match='does not fit this model'):
    train.train_and_evaluate(wider, str(tmp_path / 'wider'))
  missing = small_run_config(fashion_data_dir, 2)
  missing.init_from = str(tmp_path / 'nowhere')
  with pytest.raises(config_lib.ConfigError, match='init_from .* does not exist'):
    train.train_and_evaluate(missing, str(tmp_path / 'missing'))


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_checkpoints(fashion_data_dir,
                                                                         tmp_path):
  config = small_run_config(fashion_data_dir, 40)
  config.optimizer.learning_rate = 1e12
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.DivergedError, match=r'loss became (nan|inf) by step \d+: lower '
                                                r'the learning rate') as e:
    train.train_and_evaluate(config, workdir)
  assert 0 < e.value.step < 40
  kept = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert kept and max(kept) <= e.value.step
  assert not any(r['split'] == 'run' for r in metrics_io.read_records(workdir))
