"""Why skips work: filter-normalised directions, the landscape's centre, resuming a
killed landscape, deleting blocks, power iteration, and the command on trained cells."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from resnet_jax import config_lib
from resnet_jax import train
from resnet_jax.analysis import landscape
from resnet_jax.analysis import layers
from resnet_jax.analysis import lesion
from resnet_jax.analysis import probe
from resnet_jax.analysis import sharpness
from resnet_jax.analysis import why_results
from resnet_jax.analysis import why_skips
from resnet_jax.models import blocks
from resnet_jax.models import resnet
from tests.conftest import REPO, override

SMALL = why_skips.Options(landscape_resolution=3, landscape_line_points=3,
                          landscape_examples=48, lesion_examples=64, lesion_draws=2,
                          lesion_max_deleted=2, sharpness_examples=48,
                          sharpness_iterations=3)


def tiny_run_config(data_dir, shortcut):
  c = config_lib.base_config()
  return override(c, **{
      'model.depth': 14, 'model.num_filters': 4, 'model.shortcut': shortcut,
      'data.name': 'fashion_mnist', 'data.data_dir': data_dir, 'data.augment': 'none',
      'data.validation_size': 100, 'batch_size': 32, 'eval_batch_size': 100,
      'num_train_steps': 4, 'log_every_steps': 2, 'eval_every_steps': 4,
      'checkpoint_every_steps': 4})


@pytest.fixture(scope='module')
def sweep(fashion_data_dir, tmp_path_factory):
  """A sweep directory of two trained depth-14 cells: plain and residual, seed 0."""
  workdir = tmp_path_factory.mktemp('why_sweep')
  for name, shortcut in (('plain-14-seed0', 'none'), ('resnetA-14-seed0', 'A')):
    train.train_and_evaluate(tiny_run_config(fashion_data_dir, shortcut),
                             str(workdir / name))
  return str(workdir)


def filters(x, stacked):
  """The norm of each output filter of a kernel (per block of a scanned stage)."""
  axes = tuple(range(1 if stacked else 0, x.ndim - 1))
  return np.sqrt(np.sum(np.square(np.asarray(x)), axis=axes))


def test_every_filter_of_a_normalised_direction_has_its_weights_norm(sweep):
  params = layers.restore_cell(os.path.join(sweep, 'resnetA-14-seed0')).final_state.params
  d = landscape.random_direction(jax.random.PRNGKey(3), params)
  checked = {'conv': 0, 'stacked': 0, 'one_d': 0}
  for (path, w), (_, x) in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree_util.tree_leaves_with_path(d)):
    stacked = any(str(getattr(k, 'key', '')).endswith('_blocks') for k in path)
    if w.ndim - stacked <= 1:  # BatchNorm scales and offsets, the head's bias.
      assert np.all(np.asarray(x) == 0), path
      checked['one_d'] += 1
    else:
      np.testing.assert_allclose(filters(x, stacked), filters(w, stacked), rtol=1e-5)
      checked['stacked' if stacked else 'conv'] += 1
  assert all(checked.values()), checked


def test_the_landscapes_centre_is_the_runs_own_evaluation_of_the_same_images(sweep, tmp_path):
  cell = layers.restore_cell(os.path.join(sweep, 'plain-14-seed0'))
  images = probe.Probe(cell.data, 'train', 40, chunk=16)  # 2.5 chunks: padding masked.
  params, stats = cell.final_state.params, cell.final_state.batch_stats
  d1, d2 = landscape.directions('1d', jax.random.PRNGKey(0), params, None)
  evaluate = landscape.evaluator(cell.model, 1)
  out = landscape.compute(str(tmp_path / 'l.json'), '1d',
                          {'resolution': 3, 'examples': 40, 'seed': 0, 'step': cell.step},
                          evaluate, params, d1, d2, stats, images.chunks(), 1)
  assert out['coords'][1] == [0.0, 0.0]
  raw, labels = cell.data.first('train', 40)
  own = cell.trainer.evaluate(cell.final_state, [
      {'image': raw, 'label': labels, 'mask': np.ones(40, np.float32)}])
  assert np.isclose(out['loss'][1], own['loss'], rtol=1e-5)
  assert out['accuracy'][1] == pytest.approx(own['accuracy'])
  assert out['loss'][0] != out['loss'][1]  # The ends are other nets.
  # The line's ends: t = 0 the initial net, t = 1 the trained one.
  d1, d2 = landscape.directions('line', None, params, cell.init_state.params)
  line = landscape.compute(str(tmp_path / 'line.json'), 'line',
                           {'resolution': 3, 'examples': 40, 'seed': 0, 'step': cell.step},
                           evaluate, params, d1, d2, stats, images.chunks(), 1)
  assert evaluate._cache_size() == 1  # One program for every point of both.
  assert line['coords'] == [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
  start = probe.loss_and_accuracy(cell.model, cell.init_state.params, stats, images.chunks())
  assert np.isclose(line['loss'][0], float(start[0]), rtol=1e-4)
  assert np.isclose(line['loss'][2], own['loss'], rtol=1e-4)
  past = landscape.coordinates('line', 21)[:, 0]
  assert past[3] == 0 and past[17] == 1 and past[0] < 0 and past[-1] > 1


def test_profiles_are_the_loss_along_their_own_directions_and_resume(sweep, tmp_path):
  cell = layers.restore_cell(os.path.join(sweep, 'resnetA-14-seed0'))
  images = probe.Probe(cell.data, 'train', 32, chunk=16)
  params, stats = cell.final_state.params, cell.final_state.batch_stats
  evaluate = landscape.evaluator(cell.model, 2)  # Two points a call: one padded.
  settings = {'examples': 32, 'seed': 3, 'step': cell.step, 'directions': 3,
              'distances': [0.25, 0.5, 1.0]}
  path = str(tmp_path / 'profiles.json')
  out = landscape.compute_profiles(path, settings, evaluate, params, stats,
                                   images.chunks(), 2)
  assert len(out['loss']) == 9 and all(np.isfinite(out['loss']))
  # Direction 1 at distance 0.5, evaluated directly: seed 3's direction of index 1.
  d = landscape.random_direction(jax.random.fold_in(jax.random.PRNGKey(3), 2), params)
  moved = jax.tree_util.tree_map(lambda w, x: w + 0.5 * x, params, d)
  direct, _ = probe.loss_and_accuracy(cell.model, moved, stats, images.chunks())
  assert np.isclose(out['loss'][4], float(direct), rtol=1e-4)
  assert len({round(x, 6) for x in out['loss'][2::3]}) == 3  # Three other directions.
  # None of them the 1-D landscape's (the seed's first split key).
  d1, _ = landscape.directions('1d', jax.random.PRNGKey(3), params, None)
  first = jax.tree_util.tree_leaves(d1)[-1]
  assert not np.allclose(first, jax.tree_util.tree_leaves(d)[-1])
  # Killed after its first direction: the rest is computed, the first kept.
  saved = json.load(open(path))
  saved['loss'][3:] = [None] * 6
  saved['loss'][0] = 123.0  # A marker: recomputing it would overwrite it.
  json.dump(saved, open(path, 'w'))
  again = landscape.compute_profiles(path, settings, evaluate, params, stats,
                                     images.chunks(), 2)
  assert again['loss'][0] == 123.0 and np.allclose(again['loss'][3:], out['loss'][3:])


def test_a_killed_landscape_resumes_without_recomputing_finished_points(tmp_path):
  calls = []

  def evaluate(params, d1, d2, coords, stats, chunks):
    calls.append(np.asarray(coords).tolist())
    if len(calls) == 3 and kill:
      raise KeyboardInterrupt
    a, b = np.asarray(coords).T
    return jnp.asarray(a ** 2 + 2 * b ** 2), jnp.asarray(1 - a * b)

  settings = {'resolution': 3, 'examples': 8, 'seed': 0, 'step': 5}
  path = str(tmp_path / 'landscape_2d.json')
  kill = True
  with pytest.raises(KeyboardInterrupt):
    landscape.compute(path, '2d', settings, evaluate, None, None, None, None, None, 2)
  saved = json.load(open(path))
  assert sum(v is not None for v in saved['loss']) == 4  # Two calls of two points.
  calls.clear()
  kill = False
  out = landscape.compute(path, '2d', settings, evaluate, None, None, None, None, None, 2)
  assert len(calls) == 3  # The other 5 points, the last call padded.
  done = [p for c in calls for p in c]
  assert len({tuple(p) for p in done}) == 5
  coords = np.asarray(out['coords'])
  np.testing.assert_allclose(out['loss'], coords[:, 0] ** 2 + 2 * coords[:, 1] ** 2)
  calls.clear()
  assert landscape.compute(path, '2d', settings, evaluate, None, None, None, None, None,
                           2) == out and not calls
  # Other settings: computed anew.
  landscape.compute(path, '2d', dict(settings, step=6), evaluate, None, None, None, None,
                    None, 2)
  assert len(calls) == 5


def _net(sizes, scan):
  return resnet.ResNet(stage_sizes=sizes, block_cls=blocks.BasicBlock, num_classes=3,
                       num_filters=4, stem='cifar', shortcut='A', scan_blocks=scan)


def _without(tree, stage, k, scan, size):
  """A variable tree of the net with block k (0-based, not the first) of `stage` gone."""
  tree = dict(tree)
  if scan:
    key = f'stage{stage}_blocks'
    tree[key] = jax.tree_util.tree_map(lambda x: jnp.delete(x, k - 1, axis=0), tree[key])
    return tree
  for j in range(k, size - 1):
    tree[f'stage{stage}_block{j + 1}'] = tree[f'stage{stage}_block{j + 2}']
  del tree[f'stage{stage}_block{size}']
  return tree


@pytest.mark.parametrize('scan', [True, False])
def test_deleting_a_block_equals_the_net_built_without_it(scan):
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 3))
  net = _net([3, 3, 2], scan)
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  # Running statistics of a trained net, not the placeholders.
  variables = {**variables, 'batch_stats': jax.tree_util.tree_map(
      lambda s: s + 0.3 * jax.random.uniform(jax.random.PRNGKey(2), s.shape),
      variables['batch_stats'])}
  plain = net.apply(variables, x, train=False)
  np.testing.assert_array_equal(net.apply(variables, x, train=False, keep=np.ones(8)), plain)
  assert resnet.deletable_blocks(net) == [True, True, True, False, True, True, False, True]
  for stage, k, index, sizes in ((1, 1, 1, [2, 3, 2]), (2, 2, 5, [3, 2, 2])):
    keep = np.ones(8)
    keep[index] = 0
    smaller = _net(sizes, scan)
    without = {c: _without(v, stage, k, scan, [3, 3, 2][stage - 1])
               for c, v in variables.items()}
    np.testing.assert_allclose(net.apply(variables, x, train=False, keep=keep),
                               smaller.apply(without, x, train=False), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='one entry per block'):
    net.apply(variables, x, train=False, keep=np.ones(7))


def test_bottleneck_nets_cannot_delete_their_widening_first_block():
  net = resnet.ImageNetResNet(depth=50, num_classes=3, num_filters=4)
  assert resnet.deletable_blocks(net)[:4] == [False, True, True, False]


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a = jnp.asarray(q @ np.diag([7.0, 3.0, -2.0, 1.0, 0.5, 0.1]) @ q.T, jnp.float32)
  f = lambda x: 0.5 * x @ a @ x
  hvp = lambda v: jax.jvp(jax.grad(f), (jnp.zeros(6),), (v,))[1]
  out = sharpness.power_iteration(hvp, jnp.ones(6), iterations=200, tol=1e-7)
  assert out['eigenvalue'] == pytest.approx(7.0, rel=1e-4)
  assert out['iterations'] < 200


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=True):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_the_top_eigenvalue_of_a_nets_loss_hessian_is_the_dense_hessians():
  x = jax.random.normal(jax.random.PRNGKey(1), (12, 2, 2, 1))
  labels = jnp.arange(12) % 3
  model = _Linear()
  params = model.init(jax.random.PRNGKey(0), x)['params']
  chunks = (x.reshape(3, 4, 2, 2, 1), labels.reshape(3, 4), jnp.ones((3, 4)))
  flat, unravel = ravel_pytree(params)
  loss = lambda p: probe.loss_and_accuracy(model, unravel(p), {}, chunks)[0]
  dense = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat)))
  top = dense[np.argmax(np.abs(dense))]
  out = sharpness.top_eigenvalue(model, params, {}, chunks, iterations=500, tol=1e-7)
  assert out['eigenvalue'] == pytest.approx(top, rel=1e-3)


def test_the_command_analyses_a_sweeps_cells_once_and_the_report_shows_them(sweep):
  # Four steps leave the tiny nets near chance: --stalled analyses them all the same.
  analysed = why_skips.run_sweep(sweep, dataclasses.replace(SMALL, stalled=True))
  assert [c['name'] for c in analysed] == ['plain-14-seed0', 'resnetA-14-seed0']
  for name in ('plain-14-seed0', 'resnetA-14-seed0'):
    out = why_results.read(os.path.join(sweep, name))
    assert set(out) == {'landscape_2d', 'landscape_1d', 'landscape_line', 'profiles',
                        'lesion', 'sharpness'}
    assert len(out['profiles']['loss']) == 8 * 3
    assert len(out['landscape_2d']['loss']) == 9 and len(out['landscape_1d']['loss']) == 3
    # Depth 14: both blocks of stage 1 and the second of stages 2 and 3.
    assert [s['block'] for s in out['lesion']['single']] == [
        'stage1_block1', 'stage1_block2', 'stage2_block2', 'stage3_block2']
    assert len(out['lesion']['random']['2']) == 2
    assert np.isfinite(out['sharpness']['eigenvalue'])
  stamps = {f: os.path.getmtime(os.path.join(sweep, 'plain-14-seed0', 'why', f))
            for f in os.listdir(os.path.join(sweep, 'plain-14-seed0', 'why'))}
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  cmd = [sys.executable, '-m', 'experiments.why_skips', f'--workdir={sweep}',
         '--landscape_resolution=3', '--landscape_line_points=3', '--landscape_examples=48',
         '--lesion_examples=64', '--lesion_draws=2', '--lesion_max_deleted=2',
         '--sharpness_examples=48', '--sharpness_iterations=3', '--stalled']
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert {f: os.path.getmtime(os.path.join(sweep, 'plain-14-seed0', 'why', f))
          for f in stamps} == stamps  # Nothing computed again.
  for f in ('landscape_2d.png', 'landscape_1d.png', 'lesion.png', 'sharpness.png'):
    assert os.path.exists(os.path.join(sweep, f)), f
  report = open(os.path.join(sweep, 'report.md')).read()
  assert '![lesion.png](lesion.png)' in report and 'sharpness' in report
  rows = [l for l in report.splitlines() if l.startswith('| ') and '] |' in l]
  assert [r.split(' | ')[:2] for r in rows] == [['| plain-14', '0'], ['| ResNet(A)-14', '0']]
  assert 'sharpness' in open(os.path.join(sweep, 'results.md')).read().splitlines()[0]
  bad = subprocess.run(cmd[:4] + ['--cells=plain-99-*'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and 'No finished cell matches --cells' in bad.stderr


def test_single_runs_are_analysed_and_other_settings_computed_anew(sweep, capsys):
  run = os.path.join(sweep, 'resnetA-14-seed0')
  lesion_only = why_skips.Options(analyses=('lesion',), lesion_examples=32, lesion_draws=1,
                                  lesion_max_deleted=1, seed=7)
  why_skips.run_dirs([run], lesion_only)
  saved = why_results.read(run)['lesion']
  assert saved['settings'] == {'examples': 32, 'draws': 1, 'max_deleted': 1, 'seed': 7,
                               'step': 4}
  assert '[1/1] resnetA-14-seed0: lesion (32 test images)' in capsys.readouterr().out
  why_skips.run_dirs([run], lesion_only)  # The same settings: nothing to compute.
  assert capsys.readouterr().out == ''


def test_bad_options_are_refused_naming_the_key():
  for options, key in ((why_skips.Options(analyses=('landscape', 'hessian')), 'hessian'),
                       (why_skips.Options(landscape_resolution=1), 'landscape_resolution'),
                       (why_skips.Options(landscape_line_points=20), 'landscape_line_points'),
                       (why_skips.Options(landscape_seeds='some'), 'landscape_seeds'),
                       (why_skips.Options(landscape_directions=0), 'landscape_directions'),
                       (why_skips.Options(lesion_draws=-1), 'lesion_draws')):
    with pytest.raises(ValueError, match=key):
      options.check()


def _set_final_train_accuracy(celldir, accuracy):
  path = os.path.join(celldir, 'metrics.jsonl')
  with open(path) as f:
    records = [json.loads(line) for line in f]
  last = max(i for i, r in enumerate(records) if r['split'] == 'train')
  records[last]['accuracy'] = accuracy
  with open(path, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)


def test_cells_that_stalled_near_chance_are_listed_not_analysed(sweep, tmp_path, capsys):
  copy = str(tmp_path / 'sweep')
  shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns('why'))
  # Chance is 90% on Fashion-MNIST's 10 classes: 88% training error stalled, 20% not.
  _set_final_train_accuracy(os.path.join(copy, 'plain-14-seed0'), 0.12)
  _set_final_train_accuracy(os.path.join(copy, 'resnetA-14-seed0'), 0.8)
  lesion_only = dataclasses.replace(SMALL, analyses=('lesion',))
  analysed = why_skips.run_sweep(copy, lesion_only)
  assert [c['name'] for c in analysed] == ['resnetA-14-seed0']
  assert 'Not analysed: 1 cells that stalled' in capsys.readouterr().out
  assert 'lesion' not in why_results.read(os.path.join(copy, 'plain-14-seed0'))
  assert 'lesion' in why_results.read(os.path.join(copy, 'resnetA-14-seed0'))
  analysed = why_skips.run_sweep(copy, dataclasses.replace(lesion_only, stalled=True))
  assert [c['name'] for c in analysed] == ['plain-14-seed0', 'resnetA-14-seed0']
  assert 'lesion' in why_results.read(os.path.join(copy, 'plain-14-seed0'))
