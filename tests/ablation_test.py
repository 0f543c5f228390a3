"""The depth ablation: the grid, shards, the report on known metrics, a tiny sweep end to end."""

import csv
import glob
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from experiments import depth_ablation
from experiments import report
from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import metrics_io
from resnet_jax import run_dir
from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'configs'))
import ablation as ablation_config  # noqa: E402  pylint: disable=g-import-not-at-top


def test_quick_grid_and_shards():
  ab = ablation_config.get_config('quick')
  cells = depth_ablation.grid(ab)
  assert len(cells) == len(ab.depths) * len(ab.seeds) * 2
  assert len({c.name for c in cells}) == len(cells)
  config = depth_ablation.cell_config(ab, depth_ablation.Cell(56, 'none', 1))
  assert (config.model.depth, config.model.shortcut, config.seed) == (56, 'none', 1)
  assert config.model.num_filters == 8 and config.num_train_steps == 60
  # The same zero-initialised head for the plain net and its residual twin.
  twin = depth_ablation.cell_config(ab, depth_ablation.Cell(56, 'A', 1))
  assert config.model.zero_init_head and twin.model.zero_init_head
  assert (config.optimizer.warmup_steps, config.optimizer.warmup_kind) == (10, 'linear')


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_shards_cover_the_grid_once_and_balance_depth(together):
  paper = depth_ablation.grid(ablation_config.get_config('paper'))
  quick = depth_ablation.grid(ablation_config.get_config('quick'))
  for cells, count in ((paper, 1), (paper, 2), (paper, 3), (paper, 10), (paper, 11),
                       (paper, 50), (paper, 64), (quick, 3), (quick, 16)):
    shards = [depth_ablation.shard(cells, i, count, together) for i in range(count)]
    assert sorted(c.name for s in shards for c in s) == sorted(c.name for c in cells)
    for s in shards:
      assert s == [c for c in cells if c in s]  # Grid order: shallow first.
    groups = {(c.depth, c.shortcut) for c in cells}
    whole = together and count <= len(groups)
    if whole:  # Each (depth, net) in one slice: one vmapped program.
      assert all(sum((c.depth, c.shortcut) == g for c in s) in (0, len(cells) // len(groups))
                 for g in groups for s in shards), count
    loads = [sum(c.depth for c in s) for s in shards]
    item = max(c.depth for c in cells) * (len(cells) // len(groups) if whole else 1)
    assert max(loads) - min(loads) <= item, (count, loads)
  layers = lambda count: sorted(sum(c.depth for c in depth_ablation.shard(paper, i, count,
                                                                           together))
                                for i in range(count))
  assert layers(2) == [1310, 1310]  # Paper on two machines.
  # On three: round-robin over cells gave 862/928/830 and split every group's seeds.
  assert layers(3) == ([870, 870, 880] if together else [872, 874, 874])
  # On ten: a vmapped group each (ResNet-110's 5 seeds: 550 layers), or, one by one,
  # a cell of each depth each.
  assert max(layers(10)) == (550 if together else 262)
  with pytest.raises(config_lib.ConfigError, match=r'^--shard_index 3 must be in \[0, '):
    depth_ablation.shard(paper, 3, 3)


def test_a_grid_with_no_cells_or_a_repeated_value_is_refused():
  ab = ablation_config.get_config('quick')
  ab.seeds = (0, 1, 0)  # Two runs of resnetA-20-seed0 would share one directory.
  with pytest.raises(config_lib.ConfigError, match=r'^config.seeds repeats 0: give each'):
    depth_ablation.grid(ab)
  ab.seeds = ()
  with pytest.raises(config_lib.ConfigError, match='^The grid has no cells'):
    depth_ablation.grid(ab)
  ab.seeds, ab.depths, ab.exclude = (0,), (20,), ('none-20', 'A-20')
  with pytest.raises(config_lib.ConfigError, match='^The grid has no cells'):
    depth_ablation.grid(ab)
  ab = ablation_config.get_config('quick')
  ab.depths = ('abc',)  # What --config.depths=abc sets.
  with pytest.raises(config_lib.ConfigError, match=r"^config.depths holds 'abc': give integers"):
    depth_ablation.grid(ab)
  ab = ablation_config.get_config('quick')
  ab.shortcuts = (1, 2)
  with pytest.raises(config_lib.ConfigError, match=r'^config.shortcuts holds 1: give names'):
    depth_ablation.grid(ab)


def test_names_given_as_one_comma_separated_string_are_split():
  """What --config.shortcuts=none,B and --config.exclude=none-20,B-32 set: one string each
  (ml_collections splits only numbers), once taken as a shortcut named 'none,B'."""
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds, ab.shortcuts, ab.exclude = (20, 32), (0,), ('none, B',), ('none-20,B-32',)
  assert [c.name for c in depth_ablation.grid(ab)] == ['resnetB-20-seed0', 'plain-32-seed0']
  ab.exclude = ('plain-20',)  # A cell's name, not its SHORTCUT-DEPTH: it excluded nothing.
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.exclude holds 'plain-20': name each \(shortcut, depth\)"):
    depth_ablation.grid(ab)


def test_a_cell_its_run_config_refuses_is_named_in_one_line():
  ab = ablation_config.get_config('quick')
  ab.run_config = 'seed_mnist.py'  # The lesson's model: it takes no depth.
  with pytest.raises(config_lib.ConfigError, match=r"^plain-20-seed0: seed_mnist.py: "
                                                   r"Unknown config argument 'depth=20'"):
    depth_ablation.cell_config(ab, depth_ablation.grid(ab)[0])


def test_workers_get_gpus_of_their_own_or_share_one_and_one_compilation_cache(tmp_path):
  envs = lambda n, devices, environ=None, sizes=(128, 1000): depth_ablation.worker_envs(
      str(tmp_path), n, depth_ablation.Devices(*devices), sizes,
      {'PATH': '/bin'} if environ is None else environ)
  cache = {'PATH': '/bin', 'JAX_COMPILATION_CACHE_DIR': str(tmp_path / '.jax_cache')}
  assert envs(2, ('cpu', 1)) == [cache, cache]  # CPU workers share the cores.
  assert envs(1, ('cuda', 4)) == [cache]  # One worker: every GPU joins its cells' mesh.
  assert envs(0, ('cuda', 4)) == []  # Every cell was done.
  # One GPU: the workers share it, each with its part of the memory.
  assert envs(2, ('cuda', 1)) == [
      dict(cache, CUDA_VISIBLE_DEVICES='0', XLA_PYTHON_CLIENT_MEM_FRACTION='0.45')] * 2
  # Enough GPUs: each worker its own, as many as divide the batch sizes.
  gpus = lambda n, devices, **kw: [e['CUDA_VISIBLE_DEVICES'] for e in envs(n, devices, **kw)]
  assert gpus(2, ('cuda', 8)) == ['0,1,2,3', '4,5,6,7']
  assert gpus(3, ('cuda', 8)) == ['0,1', '2,3', '4,5']
  assert gpus(2, ('cuda', 6), sizes=(128, 1000)) == ['0,1', '2,3']  # Not 3 each.
  assert gpus(3, ('cuda', 2)) == ['0', '1', '0']
  assert envs(3, ('cuda', 2))[0]['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.45'
  assert all('XLA_PYTHON_CLIENT_MEM_FRACTION' not in e for e in envs(2, ('cuda', 2)))
  # The GPUs the user made visible are the ones handed out; ROCm has its own variable.
  assert gpus(2, ('cuda', 2), environ={'CUDA_VISIBLE_DEVICES': '3,5'}) == ['3', '5']
  assert [e['HIP_VISIBLE_DEVICES'] for e in envs(2, ('rocm', 2))] == ['0', '1']
  mine = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.3', 'JAX_COMPILATION_CACHE_DIR': '/c'}
  assert envs(3, ('cuda', 1), mine)[2] == dict(mine, CUDA_VISIBLE_DEVICES='0')  # The user's win.


def test_more_than_one_worker_on_a_tpu_vm_is_refused():
  tpu = depth_ablation.Devices('tpu', 4)
  depth_ablation.check_parallel(1, tpu)
  depth_ablation.check_parallel(4, depth_ablation.Devices('cuda', 1))
  with pytest.raises(config_lib.ConfigError, match=r'^--parallel=2 on a TPU VM: .* run '
                     r'--parallel=1 .* or spread the grid over several VMs'):
    depth_ablation.check_parallel(2, tpu)


def test_a_report_of_no_sweep_says_so_in_one_line(tmp_path):
  for workdir in (tmp_path / 'missing', tmp_path):
    out = subprocess.run([sys.executable, '-m', 'experiments.report', f'--workdir={workdir}'],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f'error: {workdir} is not a directory: pass the sweep\'s --workdir.'
        if workdir != tmp_path else
        f'error: No ablation cells with metrics in {workdir}: run the sweep first.']
  write_cell(str(tmp_path / 'sweep'), 'plain-20-seed0', 0.9, 0.9, 0.9)
  with pytest.raises(report.ReportError, match=f"^{tmp_path}/sweep/plain-20-seed0 is one cell's "
                     f'directory: pass the sweep directory that holds it '
                     f'\\({tmp_path}/sweep\\).$'):
    report.write_report(str(tmp_path / 'sweep' / 'plain-20-seed0'))
  assert len(report.write_report(str(tmp_path / 'sweep'), analyse=False)) == 1
  (tmp_path / 'ablation.json').write_text('{"preset": "qu')  # Cut short by a full disk.
  out = subprocess.run([sys.executable, '-m', 'experiments.report', f'--workdir={tmp_path}'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'error: {tmp_path}/ablation.json is unreadable (') and lines[0].endswith(
          'rerun the sweep\'s command with --report_only, which rewrites it and the report.')


def test_gradients_at_init_of_a_zero_head_net_are_probed_through_its_random_head():
  import jax
  import jax.numpy as jnp
  from experiments import analysis
  from resnet_jax import models
  rng, shape = jax.random.PRNGKey(3), (16, 16, 3)
  images = jax.random.normal(jax.random.PRNGKey(4), (8,) + shape)
  labels = jnp.arange(8) % 10
  def init(model):
    return model.init(rng, jnp.zeros((1,) + shape), train=False)
  for shortcut in ('none', 'A'):
    zero = models.create_model('cifar_resnet', depth=8, num_filters=4, shortcut=shortcut,
                               zero_init_head=True)
    default = zero.clone(zero_init_head=False)
    v_zero, v_default = init(zero), init(default)
    norms = analysis.gradient_norms_fn(zero)
    assert not np.any(np.asarray(norms(v_zero, images, labels)))  # No gradient comes back.
    probed = analysis.probe_params(zero, v_zero['params'], rng, shape)
    jax.tree_util.tree_map(np.testing.assert_array_equal, probed, v_default['params'])
    got = norms({**v_zero, 'params': probed}, images, labels)
    np.testing.assert_allclose(got, norms(v_default, images, labels), rtol=1e-6)
    assert np.all(np.asarray(got) > 0)
    # A net with a random head is probed as it is.
    assert analysis.probe_params(default, v_default['params'], rng, shape) is v_default['params']
  # Params on a mesh (a restored run's) are probed on it: one program serves both states.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  on_mesh = jax.device_put(v_zero, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  probed = analysis.probe_params(zero, on_mesh['params'], rng, shape)
  norms = analysis.gradient_norms_fn(zero)
  for v in (on_mesh, {**on_mesh, 'params': probed}):
    norms(v, images, labels)
  assert norms._cache_size() == 1


def preset_cells(preset: str):
  """(cell, its validated run config) for every cell of an ablation preset."""
  ab = ablation_config.get_config(preset)
  configs = [(cell, depth_ablation.cell_config(ab, cell)) for cell in depth_ablation.grid(ab)]
  for _, c in configs:
    config_lib.validate(c)
  return configs


def test_paper_preset_cells_are_the_paper_recipe():
  cells = preset_cells('paper')
  assert len(cells) == 5 * 5 * 2 and len(PAPER_ARCHITECTURES) == 5 * 2
  for cell, c in cells:
    assert c.data.name == 'cifar10' and c.data.validation_size == 5000
    assert (c.batch_size, c.num_train_steps, c.optimizer.learning_rate) == (128, 64000, 0.1)
    assert tuple(c.optimizer.boundaries) == (32000, 48000)
    assert c.model.shortcut == ('none' if cell.shortcut == 'none' else 'A')
    assert c.optimizer.warmup_steps == (400 if cell.depth >= 110 else 0)
  extreme = [c.name for c in depth_ablation.grid(ablation_config.get_config('extreme'))]
  assert 'resnetA-1202-seed0' in extreme and 'plain-110-seed0' in extreme
  assert 'plain-1202-seed0' not in extreme


def test_full_preset_warms_up_over_its_first_epoch():
  cells = preset_cells('full')
  assert len(cells) == 4 * 2 * 2
  for _, c in cells:
    assert (c.data.name, c.model.num_filters, c.num_epochs) == ('fashion_mnist', 16, 20.0)
    # One epoch: Fashion-MNIST's 60,000 training images less the 5,000 held out.
    assert c.optimizer.warmup_steps == 55_000 // c.batch_size == 429
    assert c.optimizer.warmup_kind == 'linear'


# Seed 0 of each (depth, plain or residual): the paper grid's architectures.
PAPER_ARCHITECTURES = [c for c in depth_ablation.grid(ablation_config.get_config('paper'))
                       if c.seed == 0]


@pytest.mark.parametrize('cell', PAPER_ARCHITECTURES, ids=lambda c: c.name)
def test_every_paper_architecture_trains_on_mock_cifar10(tmp_path, cell):
  """Each (depth, plain or residual) of the paper preset, as its cells configure it, for
  one step (seeds change only `seed`; every cell's config is checked above). One case
  per architecture, so that the cases spread over the test workers. The batch is cut
  from the recipe's 128 (checked above) to 16: the same programs at a smaller shape,
  a fifth less time for the ten cases."""
  import tensorflow_datasets as tfds
  from resnet_jax import train
  c = depth_ablation.cell_config(ablation_config.get_config('paper'), cell)
  c.data.validation_size, c.num_train_steps, c.eval_batch_size = 64, 1, 64
  c.batch_size = 16
  c.log_every_steps = 1
  c.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=192):
    out = train.train_and_evaluate(c, str(tmp_path / cell.name))
  # (After one step the BatchNorm running statistics are still those of
  # initialisation, so deep plain nets' eval outputs on noise may overflow: the
  # evaluation must run, and the training step must be finite.)
  assert 'test' in out and 'validation' in out
  train_rows = [r for r in metrics_io.read_metrics(str(tmp_path / cell.name))
                if r['split'] == 'train']
  assert len(train_rows) == 1 and np.isfinite(train_rows[0]['loss']), cell.name


def test_imagenet_preset_cells_are_figure_4s_nets():
  cells = preset_cells('imagenet')
  assert sorted(c.name for c, _ in cells) == [
      'plain-18-seed0', 'plain-34-seed0', 'resnetA-18-seed0', 'resnetA-34-seed0']
  for cell, c in cells:
    assert (c.data.name, c.model.name, c.model.depth) == (
        'imagenet2012', 'imagenet_resnet', cell.depth)
    assert c.model.shortcut == cell.shortcut and not c.model.zero_init_last_bn
    assert (c.batch_size, c.num_epochs) == (1024, 90.0)
    assert depth_ablation.cell_steps(c) == 111_690  # 90 epochs of 1,271,167 images.


def test_cell_steps_are_the_presets_run_lengths_without_reading_data():
  """What --estimate multiplies a step's time by: each preset's steps, from its config
  and its data set's known size (the README's counts)."""
  for preset, steps in (('quick', 60), ('full', 8_580), ('paper', 64_000)):
    for cell, c in preset_cells(preset):
      assert depth_ablation.cell_steps(c) == steps, (preset, cell.name)


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_an_estimate_times_each_depth_and_net_once_and_counts_every_cell(together,
                                                                         monkeypatch, capsys):
  from experiments import benchmark
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds = [8], [0, 1]
  timed, time_train_step = [], benchmark.time_train_step

  def recorded(config, image_shape, num_classes, seeds, steps, warmup):
    out = time_train_step(config, image_shape, num_classes, seeds, steps, warmup)
    timed.append((config.model.shortcut, image_shape, seeds, out['step_s']))
    return out
  monkeypatch.setattr(benchmark, 'time_train_step', recorded)
  total, left = depth_ablation.estimate(ab, depth_ablation.grid(ab), together, steps=2)
  assert left == total  # No workdir: every step is left.
  # One program per depth and net, of both seeds where they train together.
  assert sorted(t[0] for t in timed) == ['A', 'none']
  assert all(shape == (28, 28, 1) and seeds == (2 if together else 1)
             for _, shape, seeds, _ in timed)
  assert np.isclose(total, sum(t[3] for t in timed) * 60 * (1 if together else 2))
  lines = capsys.readouterr().out.splitlines()
  how = '2 seeds in one program' if together else '2 seeds, one after another'
  assert re.fullmatch(rf'\[1/2\] plain-8 \({how}\): [\d,]+ ms a step \(compiled in [\d.]+ s\) '
                      rf'x 60 steps{"" if together else " x 2"} = [\d.]+ min', lines[1]), lines


def test_a_cell_is_done_only_when_its_run_record_is_whole(tmp_path):
  """A kill while the run record was written leaves it cut short: the cell is not done
  (the report calls it unfinished) but partial, so the sweep runs it again, and its run
  redoes the record."""
  cell = tmp_path / 'plain-8-seed0'
  assert depth_ablation.cell_status(str(cell)) == 'new'
  (cell / 'checkpoints' / '60').mkdir(parents=True)
  assert depth_ablation.cell_status(str(cell)) == 'partial'
  whole = '{"step": 60, "split": "train", "loss": 0.5}\n{"step": 60, "split": "run", "x": 1}\n'
  (cell / 'metrics.jsonl').write_text(whole[:-8])
  assert depth_ablation.cell_status(str(cell)) == 'partial'
  (cell / 'metrics.jsonl').write_text(whole)
  assert depth_ablation.cell_status(str(cell)) == 'done'
  (cell / 'diverged.json').write_text('{"step": 4}')
  assert depth_ablation.cell_status(str(cell)) == 'diverged'


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_an_estimate_counts_what_the_cells_in_the_workdir_have_left(together, tmp_path,
                                                                   monkeypatch, capsys):
  """A finished cell has nothing left, a partly trained one the steps past its newest
  checkpoint; a group of vmapped seeds trains from the step its unfinished seeds share."""
  from experiments import benchmark
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds = [8], [0, 1]
  monkeypatch.setattr(benchmark, 'time_train_step',
                      lambda *args, **kwargs: {'step_s': 0.5, 'compile_s': 1.0})
  (tmp_path / 'plain-8-seed0').mkdir()
  (tmp_path / 'plain-8-seed0' / 'metrics.jsonl').write_text('{"step": 60, "split": "run"}\n')
  for name in ('20', '40', '60.orbax-checkpoint-tmp-1'):  # The last one never completed.
    (tmp_path / 'plain-8-seed1' / 'checkpoints' / name).mkdir(parents=True)
  total, left = depth_ablation.estimate(ab, depth_ablation.grid(ab), together, steps=1,
                                        workdir=str(tmp_path))
  # Each program: 0.5 s a step x 60 steps; plain-8 has 20 steps left (seed 1 from 40),
  # resnetA-8 all of its 60 (vmapped) or 120 (one seed after the other).
  assert (total, left) == ((60.0, 40.0) if together else (120.0, 70.0))
  lines = capsys.readouterr().out.splitlines()
  assert lines[1].endswith('; 20 steps left, 0.2 min'), lines
  assert lines[2].endswith(' = 0.5 min; 60 steps left, 0.5 min' if together
                           else ' = 1.0 min; 120 steps left, 1.0 min'), lines


def test_an_estimate_of_the_imagenet_preset_needs_no_data(capsys):
  """The imagenet preset (no ImageNet here), at small shapes: its cell's train step is
  timed on random batches and multiplied by its run's steps."""
  ab = ablation_config.get_config('imagenet')
  ab.depths, ab.shortcuts = [18], ['A']
  ab.overrides.batch_size = 8
  ab.overrides.data.image_size = 32
  ab.overrides.model = {'dtype': 'float32'}
  depth_ablation.estimate(ab, depth_ablation.grid(ab), together=False, steps=1)
  steps = (1_281_167 - 10_000) // 8 * 90  # ImageNet's training images, 10,000 held out.
  assert re.search(rf'\[1/1\] resnetA-18 \(1 seed, one after another\): [\d,]+ ms a step '
                   rf'\(compiled in [\d.]+ s\) x {steps:,} steps = [\d,.]+ h',
                   capsys.readouterr().out)


def test_an_estimate_or_a_dry_run_from_the_command_line_writes_nothing(tmp_path):
  """Also of the cells --cells names, which it would otherwise train. Neither needs
  TensorFlow, TFDS, TensorBoard or clu (an accelerator image may lack them)."""
  (tmp_path / 'sitecustomize.py').write_text(
      'import sys\n'
      'class Block:\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      "    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'tensorboard', "
      "'clu'):\n"
      "      raise ImportError('no ' + name)\n"
      'sys.meta_path.insert(0, Block())\n')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  blocked = subprocess.run([sys.executable, '-c', 'import tensorflow_datasets'], env=env,
                           capture_output=True, text=True, timeout=60)
  assert 'ImportError: no tensorflow_datasets' in blocked.stderr

  def run(*flags):
    before = sorted(str(p) for p in tmp_path.rglob('*'))
    out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                          '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/sweep',
                          '--config.depths=8', '--config.seeds=0', *flags],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(str(p) for p in tmp_path.rglob('*')) == before
    return out.stdout.strip().splitlines()

  lines = run('--estimate')
  assert len(lines) == 4 and lines[1].startswith('[1/2] plain-8 (1 seed, one after another)')
  assert re.fullmatch(r'2 cells: about [\d.]+ min of training steps here, .*', lines[-1])
  lines = run('--estimate', '--cells=resnetA-8-seed0')
  assert len(lines) == 3 and lines[1].startswith('[1/1] resnetA-8 (1 seed')
  assert lines[-1].startswith('1 cell: about ')
  lines = run('--dry_run', '--cells=resnetA-8-seed0')
  assert len(lines) == 1 and lines[0].split()[:2] == ['resnetA-8-seed0', 'new']
  # A sweep under way: what its cells have left too.
  (tmp_path / 'sweep' / 'plain-8-seed0').mkdir(parents=True)
  (tmp_path / 'sweep' / 'plain-8-seed0' / 'metrics.jsonl').write_text('{"split": "run"}\n')
  lines = run('--estimate')
  assert lines[1].endswith('; 0 steps left, 0.0 min'), lines
  assert re.fullmatch(rf'1 of them finished and 0 partly trained in {tmp_path}/sweep: about '
                      r'[\d.]+ min of training steps left\.', lines[-1]), lines


def test_an_imagenet_preset_cell_trains_streamed_and_is_analysed_on_mock_imagenet(
    tmp_path, monkeypatch):
  """ResNet-18 of the imagenet preset, as its cell configures it but on 32x32 mock
  images, a batch of 8 and float32, trains a step through the streamed (tf.data)
  input; its layer analysis and its predictions (compare_cells) read the streamed
  held-out splits.
  (The other nets differ in depth and shortcut only; every net's programs are lowered
  for accelerators in lowering_test.)"""
  import tensorflow_datasets as tfds
  from experiments import analysis
  from experiments import compare_cells
  from resnet_jax import train
  get_builder = datasets.get_builder

  def with_split_sizes(*args, **kwargs):
    """mock_data serves 24 images a split but records no split sizes: as TFDS would."""
    builder = get_builder(*args, **kwargs)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[24], num_bytes=0)
        for s in ('train', 'validation')]))
    return builder
  monkeypatch.setattr(datasets, 'get_builder', with_split_sizes)
  ab = ablation_config.get_config('imagenet')
  cell = next(c for c in depth_ablation.grid(ab) if c.name == 'resnetA-18-seed0')
  c = depth_ablation.cell_config(ab, cell)
  c.data.image_size, c.data.validation_size, c.num_train_steps = 32, 8, 1
  c.batch_size, c.eval_batch_size, c.log_every_steps = 8, 8, 1
  c.model.dtype = 'float32'  # bfloat16 compiles slower on CPU; train_test checks it.
  c.data.data_dir = str(tmp_path / 'tfds')
  celldir = str(tmp_path / cell.name)
  with tfds.testing.mock_data(num_examples=24):
    out = train.train_and_evaluate(c, celldir)
    a = analysis.cell_analysis(celldir, num_examples=6)
    pred = compare_cells.predictions(celldir, 'test')
  assert 'test' in out and 'validation' in out
  assert len(a['grad_norm_init']) == len(a['grad_norm_final']) == 8  # Blocks: 2+2+2+2.
  assert len(a['response_std_final']) == 1 + 2 * 8  # The stem, two 3x3 layers a block.
  assert np.all(np.isfinite(a['grad_norm_init'])) and a['examples'] == 6
  # The streamed test split (ImageNet's validation; mock: 24 images), as the run scored it.
  assert len(pred['predicted']) == len(pred['labels']) == 24 and len(pred['class_names']) == 1000
  assert np.isclose((pred['predicted'] == pred['labels']).mean(), out['test']['accuracy'])


def write_cell(root, name, train_acc, val_acc, test_acc, steps=100, diverged=None,
               evals=(), unfinished=False):
  """A cell's metrics.jsonl: training summaries every 25 steps, validation at `evals`
  ({step: accuracy}) and, unless `unfinished` or diverged, the final evaluations."""
  d = os.path.join(root, name)
  os.makedirs(d)
  recs = [{'step': s, 'split': 'train', 'accuracy': train_acc - (steps - s) / 1000,
           'loss': 1.0} for s in range(25, steps + 1, 25)]
  recs += [{'step': s, 'split': 'validation', 'accuracy': a, 'loss': 1.0}
           for s, a in dict(evals).items()]
  if diverged is None and not unfinished:
    recs += [{'step': steps, 'split': 'validation', 'accuracy': val_acc, 'loss': 1.0},
             {'step': steps, 'split': 'test', 'accuracy': test_acc, 'loss': 1.0},
             {'step': steps, 'split': 'run', 'params': 1234, 'train_seconds': 10.0,
              'compile_seconds': 2.0}]
  elif diverged is not None:
    with open(os.path.join(d, 'diverged.json'), 'w') as f:
      json.dump({'step': diverged}, f)
  with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in recs)


def test_a_resumed_cells_time_counts_its_earlier_sessions():
  train = [{'step': s, 'steps_per_second': r} for s, r in ((25, 5.0), (50, 5.0), (75, 2.5))]
  run = {'step': 100, 'train_seconds': 10.0, 'compile_seconds': 2.0}
  assert report.run_seconds(run, train) == 12.0  # One session (or written before first_step).
  assert report.run_seconds(dict(run, first_step=0), train) == 12.0
  # Resumed from step 60: steps 0-50 at their summaries' speeds, 50-60 at the last one's.
  assert report.run_seconds(dict(run, first_step=60), train) == 12.0 + 5 + 5 + 2
  # Resumed from step 20, before any summary: at the last session's speed, 80 steps in 10 s.
  assert report.run_seconds(dict(run, first_step=20), train) == 12.0 + 2.5


def test_report_on_known_metrics(tmp_path, monkeypatch):
  plotted, titles, save_figure = {}, {}, report.save_figure

  def spy(fig, path):  # What each figure draws: (label, style, x, y), and its title.
    titles[os.path.basename(path)] = (fig._suptitle.get_text() if fig._suptitle else
                                      fig.axes[0].get_title())
    plotted[os.path.basename(path)] = [
        [(l.get_label(), l.get_linestyle(), list(l.get_xdata()), list(l.get_ydata()))
         for l in ax.get_lines()] + [(c.get_label(), list(c.lines[0].get_ydata()))
                                     for c in ax.containers] for ax in fig.axes]
    return save_figure(fig, path)

  monkeypatch.setattr(report, 'save_figure', spy)
  root = str(tmp_path)
  write_cell(root, 'plain-20-seed0', 0.90, 0.88, 0.87)
  write_cell(root, 'plain-20-seed1', 0.80, 0.86, 0.85)
  write_cell(root, 'resnetA-20-seed0', 0.95, 0.92, 0.91)
  write_cell(root, 'plain-56-seed0', 0.50, 0.40, 0.40, diverged=None)
  write_cell(root, 'plain-56-seed1', 0.0, 0.0, 0.0, diverged=60)
  rows = report.write_report(root, None, analyse=False)
  by = {(r['depth'], r['shortcut']): r for r in rows}
  p20 = by[(20, 'none')]
  assert p20['seeds_done'] == 2 and p20['params'] == 1234
  np.testing.assert_allclose(p20['train_error_mean'], 0.15)
  np.testing.assert_allclose(p20['train_error_std'], 0.05)
  np.testing.assert_allclose(p20['test_error_mean'], 0.14)
  assert by[(56, 'none')]['diverged'] == 1 and by[(56, 'none')]['seeds_done'] == 1
  np.testing.assert_allclose(by[(20, 'A')]['val_error_mean'], 0.08)
  with open(tmp_path / 'results.csv') as f:
    csv_rows = list(csv.DictReader(f))
  assert len(csv_rows) == 3 and csv_rows[0]['net'] == 'plain'
  md = (tmp_path / 'results.md').read_text()
  assert '| 20 | plain | 1,234 | 15.00 +- 5.00 |' in md
  assert '| 20 | residual (A) | 1,234 | 5.00 | 8.00 | 9.00 |' in md  # One seed: no spread.
  assert csv_rows[1]['train_error_std'] == 'nan'
  report_md = (tmp_path / 'report.md').read_text()
  assert report_md.startswith('# Depth ablation: plain versus residual\n')  # No preset known.
  assert titles['depth_vs_error.png'] == 'Final error against depth (mean +- std over seeds)'
  assert '![training_curves.png]' in report_md
  for fig in ('training_curves.png', 'depth_vs_error.png'):
    assert (tmp_path / fig).stat().st_size > 10_000  # A real picture, not an empty canvas.
  assert not [name for name in os.listdir(root) if '.tmp' in name]
  # Figure 6: training error dashed (mean over seeds), held-out solid, plain left; the
  # diverged plain-56 seed is left out of the curves as out of the table.
  plain, residual = [[(label, style, x, np.round(y, 6).tolist()) for label, style, x, y in ax]
                     for ax in plotted['training_curves.png']]
  assert plain[0][1:] == ('--', [25, 50, 75, 100], [22.5, 20.0, 17.5, 15.0])
  assert plain[1] == ('plain-20', '-', [100], [13.0])
  assert plain[2][1:] == ('--', [25, 50, 75, 100], [57.5, 55.0, 52.5, 50.0])
  assert plain[3] == ('plain-56', '-', [100], [60.0])
  assert residual[1] == ('ResNet-20', '-', [100], [8.0])
  bars = {c[0]: np.round(c[1], 6).tolist() for c in plotted['depth_vs_error.png'][0]
          if len(c) == 2}
  assert bars == {'plain, training': [15.0, 50.0], 'plain, test': [14.0, 60.0],
                  'residual (A), training': [5.0], 'residual (A), test': [9.0]}
  # The cells' data set, from a cell's config.json, titles the report and the figures.
  (tmp_path / 'plain-20-seed1' / 'config.json').write_text('{"data": {"name": "cifar100"}}')
  report.write_report(root, ml_collections.ConfigDict({'preset': 'paper',
                                                       'paper_table': 'cifar10'}),
                      analyse=False)
  assert (tmp_path / 'report.md').read_text().startswith(
      '# Depth ablation: plain versus residual (paper preset, cifar100)\n')
  assert 'paper' not in (tmp_path / 'results.md').read_text()  # Table 6 is of CIFAR-10.
  assert titles == {
      'training_curves.png': 'Training (dashed) and held-out validation (solid) error, '
                             'mean over seeds, cifar100',
      'depth_vs_error.png': 'Final error against depth (mean +- std over seeds), cifar100'}


def test_report_files_are_replaced_whole_while_others_write_and_read_them(tmp_path):
  """Shards sharing a sweep directory rewrite its report as each ends: a reader sees one
  writer's whole file, never a mix or a truncated one; a failed write keeps the old."""
  path = str(tmp_path / 'report.md')
  writer = ('import sys; from resnet_jax import run_dir\n'
            'for _ in range(300): run_dir.write_text(sys.argv[1], sys.argv[2] * 200_000)')
  procs = [subprocess.Popen([sys.executable, '-c', writer, path, ch], cwd=REPO)
           for ch in 'ab']
  seen = set()
  while any(p.poll() is None for p in procs):
    if os.path.exists(path):
      with open(path) as f:
        text = f.read()
      assert text in ('a' * 200_000, 'b' * 200_000), (len(text), set(text))
      seen.add(text[0])
  assert [p.returncode for p in procs] == [0, 0] and seen
  before = open(path).read()
  with pytest.raises(OSError):
    with run_dir.replacing(path) as tmp, open(tmp, 'w') as f:
      f.write('half')
      raise OSError('No space left on device')
  assert open(path).read() == before and os.listdir(tmp_path) == ['report.md']


def test_layer_responses_left_in_layer_order_right_sorted(tmp_path, monkeypatch):
  import matplotlib
  import matplotlib.figure
  matplotlib.use('Agg')
  drawn, savefig = [], matplotlib.figure.Figure.savefig
  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', lambda fig, path, *a, **k: (
      drawn.extend([list(l.get_ydata()) for l in ax.get_lines()] for ax in fig.axes),
      savefig(fig, path, *a, **k)))
  analyses = [{'depth': 20, 'shortcut': 'none', 'response_std_final': [1.0, 3.0, 2.0]}]
  report._analysis_figure(analyses, ('response_std_final', 'response_std_final'),
                          ('in layer order', 'sorted'), 'std', str(tmp_path / 'f.png'), 't',
                          sort_right=True)
  assert drawn == [[[1.0, 3.0, 2.0]], [[3.0, 2.0, 1.0]]]


def test_each_shortcut_option_is_drawn_in_a_style_of_its_own(tmp_path, monkeypatch):
  styles = report.shortcut_styles(['none', 'C', 'A', 'B', 'A'])
  assert styles['none'] == ('tab:red', '--') and styles['A'] == ('tab:blue', '-')
  assert len({c for c, _ in styles.values()}) == len({l for _, l in styles.values()}) == 4
  drawn = {}

  def spy(fig, path):  # Each figure's (label, colour, line style), errorbars' too.
    drawn[os.path.basename(path)] = {
        (label, line.get_color(), line.get_linestyle()) for ax in fig.axes
        for label, line in [*((l.get_label(), l) for l in ax.get_lines()),
                            *((c.get_label(), c.lines[0]) for c in ax.containers)]
        if not label.startswith('_')}
    import matplotlib.pyplot as plt
    plt.close(fig)

  monkeypatch.setattr(report, 'save_figure', spy)
  for name in ('plain-20-seed0', 'resnetA-20-seed0', 'resnetB-20-seed0'):
    write_cell(str(tmp_path), name, 0.9, 0.9, 0.9)
  report.write_report(str(tmp_path), analyse=False)
  colours = {label.split(',')[0]: colour for label, colour, _ in drawn['depth_vs_error.png']}
  assert colours == {'plain': 'tab:red', 'residual (A)': 'tab:blue',
                     'residual (B)': 'tab:green'}
  analyses = [{'depth': 20, 'shortcut': s, 'response_std_final': [1.0, 2.0]}
              for s in ('none', 'A', 'B')]
  report._analysis_figure(analyses, ('response_std_final', 'response_std_final'), ('a', 'b'),
                          'std', str(tmp_path / 'layers.png'), 't')
  assert {(label, style) for label, _, style in drawn['layers.png']} == {
      ('plain-20', '--'), ('ResNet(A)-20', '-'), ('ResNet(B)-20', '-.')}


def test_report_of_a_sweep_in_progress(tmp_path, monkeypatch):
  """Unfinished cells: listed with their step, in the step-matched tables beside finished
  ones, and drawn in the curves where their depth and net has no finished seed."""
  labels, save_figure = {}, report.save_figure

  def spy(fig, path):
    labels[os.path.basename(path)] = [[l.get_label() for l in ax.get_lines()]
                                      for ax in fig.axes]
    return save_figure(fig, path)

  monkeypatch.setattr(report, 'save_figure', spy)
  root = str(tmp_path)
  write_cell(root, 'resnetA-20-seed0', 0.95, 0.92, 0.91, evals={50: 0.80})
  write_cell(root, 'resnetA-20-seed1', 0.93, 0.90, 0.89, evals={50: 0.70})
  write_cell(root, 'resnetA-56-seed0', 0.97, None, None, steps=75, evals={50: 0.85},
             unfinished=True)
  write_cell(root, 'plain-56-seed0', 0.0, 0.0, 0.0, steps=50, diverged=40)
  rows = report.write_report(root, None, analyse=False)
  by = {(r['depth'], r['shortcut']): r for r in rows}
  assert by[(56, 'A')]['seeds_done'] == 0 and by[(20, 'A')]['seeds_done'] == 2
  md = (tmp_path / 'report.md').read_text()
  assert '- resnetA-56-seed0: at step 75, training error 3.00%, validation error ' \
         '15.00% at step 50' in md
  assert 'plain-56-seed0: at step' not in md  # Diverged: not unfinished.
  # Validation error at steps 50 and 100 (ResNet-56 has not reached 100), then training
  # error over the steps since the row before (ResNet-20 at step 50: the seeds' 12.5 and
  # 10 at steps 25 and 50, and 14.5 and 12); the diverged plain-56 has no column.
  assert ('| step | ResNet(A)-20 | ResNet(A)-56 |\n|---|---|---|\n'
          '| 50 | 25.00 | 15.00 |\n| 100 | 9.00 | - |\n') in md
  assert '| 50 | 12.25 | 6.75 |\n| 100 | 7.25 | - |\n' in md
  plain, residual = labels['training_curves.png']
  assert plain == [] and len(residual) == 4  # Training dashed, held-out solid: labelled.
  assert [l for l in residual if not l.startswith('_')] == ['ResNet-20', 'ResNet-56 (unfinished)']


def test_training_error_at_matched_steps_averages_the_intervals_by_length():
  # Intervals (0, 100], (100, 200], (200, 250]: the last, half as long, weighs half.
  curve = [(200, 0.2), (100, 0.4), (250, 0.5), (200, 0.2)]  # Out of order, repeated.
  means = report._interval_means(curve, [100, 250, 300])
  assert means.keys() == {100, 250}  # Step 300 not reached.
  np.testing.assert_allclose(means[100], 0.4)
  np.testing.assert_allclose(means[250], (0.2 * 100 + 0.5 * 50) / 150)


def test_step_tables_keep_at_most_max_rows_with_the_last():
  cells = [{'depth': 20, 'shortcut': 'A', 'done': True, 'diverged_step': None,
            'last_step': 1000, 'val_curve': [(s, 0.5) for s in range(50, 1001, 50)],
            'train_curve': [(s, 0.4) for s in range(50, 1001, 50)]}]
  val = report.step_tables(cells, max_rows=5).split('\n\n')[1]
  assert [line.split(' | ')[0] for line in val.splitlines()[2:]] == [
      '| 50', '| 300', '| 550', '| 750', '| 1,000']


def test_paper_table_column():
  rows = [{'depth': 56, 'shortcut': 'A', 'net': 'residual (A)', 'params': 853018,
           'train_error_mean': 0.01, 'train_error_std': 0.0, 'val_error_mean': 0.07,
           'val_error_std': 0.0, 'test_error_mean': 0.07, 'test_error_std': 0.001,
           'steps': 64000, 'seconds_mean': 100.0, 'seeds_done': 5, 'diverged': 0}]
  assert '| 6.97 |' in report.results_markdown(rows, paper_table=True)  # An older sweep's.
  assert '| 6.97 |' in report.results_markdown(rows, paper_table='cifar10')
  imagenet_rows = [dict(r, depth=d, shortcut=s, net=n) for r in rows for d in (18, 34)
                   for s, n in (('none', 'plain'), ('A', 'residual (A)'))]
  md = report.results_markdown(imagenet_rows, paper_table='imagenet')
  assert 'paper val error % (top-1, 10-crop)' in md.splitlines()[0]
  assert [line.split(' | ')[-1] for line in md.splitlines()[2:]] == [
      '27.94 |', '27.88 |', '28.54 |', '25.03 |']
  assert 'paper' not in report.results_markdown(rows, paper_table='')
  with pytest.raises(report.ReportError, match="paper_table='cifar100' is not a table"):
    report.results_markdown(rows, paper_table='cifar100')


def tiny_ablation(tmp_path, data_dir, shortcuts, seeds, steps, eval_every):
  """Writes an ablation config of depth-8, width-4 cells on the small Fashion-MNIST."""
  cfg = tmp_path / 'tiny_ablation.py'
  cfg.write_text(f'''
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.preset, c.run_config, c.depths = 'tiny', 'fashion_mnist.py', (8,)
  c.shortcuts, c.seeds = {shortcuts!r}, {seeds!r}
  c.analysis_examples, c.paper_table, c.exclude = 32, False, ()
  c.overrides = ml_collections.ConfigDict({{
      'model': {{'num_filters': 4}}, 'data': {{'data_dir': {data_dir!r}, 'validation_size': 100}},
      'batch_size': 32, 'eval_batch_size': 100, 'num_train_steps': {steps}, 'log_every_steps': 2,
      'eval_every_steps': {eval_every}, 'checkpoint_every_steps': 2}})
  return c
''')
  return cfg


def test_tiny_sweep_end_to_end_resumes(fashion_data_dir, tmp_path, capsys):
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none', 'A'), seeds=(0,),
                      steps=4, eval_every=2)
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  cmd = [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
         f'--workdir={workdir}']
  dry = subprocess.run(cmd + ['--dry_run'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert dry.returncode == 0, dry.stderr[-2000:]
  assert 'plain-8-seed0' in dry.stdout and 'resnetA-8-seed0' in dry.stdout
  # Killed (driver and cell, with SIGKILL) once the first cell has finished...
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, start_new_session=True)
  for line in proc.stdout:
    if ': done in' in line:
      first = line.split(':')[0]
      os.killpg(proc.pid, signal.SIGKILL)
      break
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  with open(os.path.join(workdir, first, 'metrics.jsonl')) as f:
    first_metrics = f.read()
  # ...the same command finishes the sweep without redoing the finished cell (its
  # flags given as `--flag value` here: the workers must not take them as arguments).
  out = subprocess.run(cmd + ['--parallel', '2', '--progress_every', '0'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert '1 finished, 1 to run' in out.stdout
  # While the cell runs, the driver says which step it has reached, from the cell's log.
  assert re.search(r'^running: \w+-8-seed0 step [24]/4; 1/1 done', out.stdout, re.M) is None
  assert re.search(r'^running: \w+-8-seed0 step [24]/4; 0/1 done', out.stdout, re.M), \
      out.stdout
  assert f'started {first}' not in out.stdout
  with open(os.path.join(workdir, first, 'metrics.jsonl')) as f:
    assert f.read() == first_metrics
  for f in ('results.csv', 'results.md', 'report.md', 'training_curves.png',
            'depth_vs_error.png', 'layer_responses.png', 'gradient_norms.png'):
    assert os.path.exists(os.path.join(workdir, f)), f
  with open(os.path.join(workdir, 'report.md')) as f:
    assert f.readline() == ('# Depth ablation: plain versus residual (tiny preset, '
                            'fashion_mnist)\n')
  analyses = json.load(open(os.path.join(workdir, 'analysis.json')))
  assert len(analyses[0]['response_std_final']) == 7  # Stem + 2 per block, depth 8.
  assert len(analyses[0]['grad_norm_init']) == 3
  assert 'response_std_init' not in analyses[0]  # Placeholder BN statistics at init.
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert '2 finished, 0 to run' in again.stdout
  # Another budget into the same directory is refused, not reported as this sweep's.
  with open(os.path.join(workdir, 'results.md')) as f:
    results = f.read()
  other = subprocess.run(cmd + ['--config.overrides.num_train_steps=6'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert other.returncode == 1
  assert other.stderr.strip().splitlines()[-1] == (
      f'error: {workdir}/plain-8-seed0 holds a run of another config (num_train_steps: '
      f'4 -> 6): give this sweep a new --workdir (or move that cell away to run it again).')
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.read() == results
  # Checkpoints deleted to free disk: the report keeps each cell's analysis; a cell with
  # neither is left out of the analysis figures, named, and the report is still written.
  import shutil
  for name in ('plain-8-seed0', 'resnetA-8-seed0'):
    shutil.rmtree(os.path.join(workdir, name, 'checkpoints'))
  ablation = report.read_ablation(workdir)
  report.write_report(workdir, ablation)
  assert json.load(open(os.path.join(workdir, 'analysis.json'))) == analyses
  os.remove(os.path.join(workdir, 'plain-8-seed0', 'analysis.json'))
  report.write_report(workdir, ablation)
  assert 'No layer analysis of plain-8-seed0: ' in capsys.readouterr().out
  kept = json.load(open(os.path.join(workdir, 'analysis.json')))
  assert [a['shortcut'] for a in kept] == ['A']


def test_eta_counts_the_running_cells_and_the_queue_per_worker():
  eta = depth_ablation.eta_seconds
  # Two workers, one free, the other about to finish; two depth-56 cells queued: one each.
  assert eta(50.0, [0.0], [56, 56], 2) == 56 * 50.0
  # Queued cells go to whichever worker frees first: 10 left; 20, 20, 20 -> 40.
  assert eta(1.0, [10.0], [20, 20, 20], 2) == 40.0
  assert eta(1.0, [-5.0], [], 2) == 0.0  # A cell slower than expected: nothing negative.
  assert eta(2.0, [], [8, 8, 8], 1) == 48.0
  assert eta(2.0, [], [], 2) == 0.0


def test_eta_leaves_out_the_time_of_resumed_cells():
  clock = depth_ablation.Clock(workers=2)
  # A depth-56 cell resumed near its end took 100 s: no measure of a whole cell's time.
  clock.finished(56, 100.0, resumed=True)
  assert clock.eta([(20, 300.0, None)], []) is None
  assert clock.eta([], []) == 0.0  # Nothing left: no estimate needed.
  clock.finished(20, 1000.0, resumed=False)  # 50 s per layer.
  # The running ResNet-20 has 600 of its 1,000 s left; a queued depth-56 cell takes 2,800.
  assert clock.eta([(20, 400.0, None)], [56]) == 2800.0
  assert clock.eta([(20, 400.0, None)], []) == 600.0


def test_unit_progress_reads_the_last_progress_line_of_a_log(tmp_path):
  log = tmp_path / 'resnetA-56-seed0.log'
  assert depth_ablation.unit_progress(str(log)) is None  # No log yet.
  log.write_text('Compiled the train step in 15.5 s.\n')
  assert depth_ablation.unit_progress(str(log)) is None
  log.write_text(
      'step 600/8580 | loss 0.3910 | acc 0.8591 | 0.66 steps/s | 84 img/s | ETA 3:21:55\n'
      'step 700/8580 | loss 0.3692 | acc 0.8677 | 0.61 steps/s | 78 img/s | ETA 3:35:17\n'
      'step 700: validation loss 0.3712 accuracy 0.8712\n' + 'x' * 20000 + '\n'
      'step 800/8580 | loss 0.35 0.36 | acc 0.87 0.86 | 0.6 steps/s | 77 img/s | ETA 12:01:05\n')
  assert depth_ablation.unit_progress(str(log)) == (800, 8580, 12 * 3600 + 65.0)
  # A resumed unit's log: only what this session wrote after byte `start` counts.
  start = log.stat().st_size
  assert depth_ablation.unit_progress(str(log), start) is None
  with open(log, 'a') as f:
    f.write('step 900/8580 | loss 0.34 | acc 0.88 | 0.6 steps/s | 77 img/s | ETA 3:00:00\n')
  assert depth_ablation.unit_progress(str(log), start) == (900, 8580, 3 * 3600.0)


def test_eta_from_the_running_cells_progress_before_any_has_finished():
  clock = depth_ablation.Clock(workers=1)
  assert clock.eta([(56, 100.0, None)], [20]) is None  # No progress line yet.
  # ResNet-56 at step 100 of 1,000 with 900 s left: 1 s a step, 1,000 s a cell, so
  # 1000/56 s per layer; a queued depth-20 cell then takes 357 s.
  eta = clock.eta([(56, 100.0, (100, 1000, 900.0))], [20])
  np.testing.assert_allclose(eta, 900.0 + 20 * 1000 / 56)
  clock.finished(20, 400.0, resumed=False)  # Measured: 20 s per layer.
  # The running unit's own ETA stands; the queue goes at the measured speed.
  assert clock.eta([(56, 100.0, (100, 1000, 900.0))], [20]) == 900.0 + 400.0
  # A log's 0:00:00 (a tiny run) gives a speed of zero: the ETA is what the logs say.
  assert depth_ablation.Clock(1).eta([(8, 1.0, (2, 4, 0.0))], [8]) < 1e-6
  assert depth_ablation.format_minutes(90.0) == '1.5 min'
  assert depth_ablation.format_minutes(9000.0) == '2.5 h'
  assert depth_ablation.format_minutes(3.8e6) == '1,055.6 h'


def test_units_group_seeds_only_when_asked():
  cells = [depth_ablation.Cell(d, s, seed) for d in (20, 56) for s in ('none', 'A')
           for seed in (0, 1)]
  assert [len(u) for u in depth_ablation.units(cells, False)] == [1] * 8
  groups = depth_ablation.units(cells, True)
  assert [[c.name for c in u] for u in groups][0] == ['plain-20-seed0', 'plain-20-seed1']
  assert len(groups) == 4 and depth_ablation.unit_name(groups[-1]) == 'resnetA-56-seeds0+1'
  cpu, gpu = depth_ablation.Devices('cpu', 1), depth_ablation.Devices('cuda', 1)
  assert depth_ablation.seeds_together('on', cpu) and not depth_ablation.seeds_together('off', gpu)
  assert depth_ablation.seeds_together('auto', gpu)
  assert not depth_ablation.seeds_together('auto', cpu)
  # ImageNet's batches are streamed one seed a process: never together.
  assert not depth_ablation.seeds_together('auto', gpu, streamed='imagenet2012')
  with pytest.raises(config_lib.ConfigError, match='only on an in-memory data set, not the '
                                                    'streamed imagenet2012'):
    depth_ablation.seeds_together('on', cpu, streamed='imagenet2012')
  assert depth_ablation.probe_devices() == cpu  # This machine's JAX sees one CPU.


def test_two_shards_at_once_into_one_directory_then_the_report(fashion_data_dir, tmp_path):
  """A grid spread over two machines: shard 0 through the driver and, at the same time,
  shard 1 through the command --dry_run prints for it (a job array's), into one
  directory, each training its depth and net's seeds in one vmapped program; then
  --report_only reports both."""
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none', 'A'), seeds=(0, 1),
                      steps=2, eval_every=0)
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  # (The seeds override, as the tiny config has them, puts shell syntax in the command.)
  cmd = [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
         f'--workdir={workdir}', '--config.seeds=(0, 1)', '--vmap_seeds=on',
         '--num_shards=2']
  dry = subprocess.run(cmd + ['--shard_index=1', '--dry_run'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert dry.returncode == 0, dry.stderr[-2000:]
  (line,) = dry.stdout.strip().splitlines()
  name, status, command = line.split(None, 2)
  assert (name, status) == ('resnetA-8-seeds0+1', 'new/new')
  assert command.startswith('python -m experiments.depth_ablation ')
  # Pasted into a shell where `python` is this environment's, as a job array would.
  job_env = dict(env, PATH=os.path.dirname(sys.executable) + os.pathsep + env['PATH'])
  job = subprocess.Popen(['bash', '-c', command], cwd=REPO, env=job_env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out = subprocess.run(cmd + ['--shard_index=0'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  job_out = job.communicate(timeout=600)[0]
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert job.returncode == 0, job_out[-3000:]
  assert '2 cells in this shard: 0 finished, 2 to run.' in out.stdout
  assert 'started plain-8-seeds0+1' in out.stdout and 'resnetA' not in out.stdout
  with open(os.path.join(workdir, 'plain-8-seeds0+1.log')) as f:
    assert 'x 2 seeds in one program (vmap)' in f.read()
  assert 'x 2 seeds in one program (vmap)' in job_out
  for cell in ('plain-8-seed0', 'plain-8-seed1', 'resnetA-8-seed0', 'resnetA-8-seed1'):
    assert depth_ablation.cell_status(os.path.join(workdir, cell)) == 'done', cell
  os.remove(os.path.join(workdir, 'results.md'))
  again = subprocess.run(cmd + ['--report_only'], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  rows = [r for r in (tmp_path / 'sweep' / 'results.md').read_text().splitlines()
          if r.startswith('| 8 |')]
  assert [r.split(' | ')[1] for r in rows] == ['plain', 'residual (A)']
  assert all(r.endswith('| 2 | 0 |') for r in rows), rows  # Both seeds, none diverged.
  assert not [n for n in os.listdir(workdir) if '.tmp' in n]


def test_the_driver_keeps_its_own_flags_from_its_cells_in_either_form():
  before, after = ['--config=c.py:quick', '--workdir', 'runs/x'], ['--config.seeds', '(0, 1)']
  for own in (['--parallel=2', '--shard_index=1', '--num_shards=2', '--dry_run'],
              ['--parallel', '2', '--shard_index', '1', '--num_shards', '2', '--dry_run'],
              ['-parallel', '2', '--vmap_seeds', 'on', '--nodry_run', '--progress_every',
               '0', '--cells', 'plain-8-seed0', '--noworker']):
    assert depth_ablation.passed_flags(before + own + after) == before + after, own


def test_a_dry_run_with_space_separated_flags_prints_runnable_commands(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', '--workdir', str(tmp_path),
                        '--config.shortcuts=none,B', '--num_shards', '8', '--shard_index',
                        '7', '--dry_run'], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2  # 16 cells over 8 slices.
  for line in lines:
    name, _, command = line.split(None, 2)
    assert name.startswith(('plain-', 'resnetB-')), name
    assert shlex.split(command) == [
        'python', '-m', 'experiments.depth_ablation', '--config=configs/ablation.py:quick',
        '--workdir', str(tmp_path), '--config.shortcuts=none,B', f'--cells={name}']


def test_any_run_key_can_be_overridden_from_the_command_line(tmp_path):
  """Keys the preset does not set (the data set, momentum) too; a misspelt one is refused
  in one line."""
  cmd = [sys.executable, '-m', 'experiments.depth_ablation', '--config=configs/ablation.py:full',
         f'--workdir={tmp_path}/sweep', '--dry_run']
  out = subprocess.run(cmd + ['--config.overrides.data.name=cifar100',
                              '--config.overrides.optimizer.momentum=0.8'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 16 and all(' --config.overrides.data.name=cifar100 ' in line
                                  for line in lines), lines
  out = subprocess.run(cmd + ['--config.overrides.optimizer.momentun=0.8'], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      'error: --config.overrides.optimizer.momentun sets a key the config does not have '
      '(Did you mean "momentum"?)')
  assert not os.path.exists(tmp_path / 'sweep')


def test_the_quick_preset_runs_on_another_data_set(tmp_path):
  """--config.overrides.data.name=cifar10: the preset's budget and nets, on mock CIFAR-10;
  keys the preset leaves unset keep the run config's values."""
  import tensorflow_datasets as tfds
  from resnet_jax import train
  ab = ablation_config.get_config('quick')
  ab.overrides.data.name = 'cifar10'
  ab.overrides.data.validation_size = 64
  ab.overrides.num_train_steps, ab.overrides.batch_size, ab.overrides.eval_batch_size = 2, 16, 64
  cell = depth_ablation.grid(ab)[1]
  c = depth_ablation.cell_config(ab, cell)
  assert (c.data.name, c.model.num_filters, c.model.zero_init_head) == ('cifar10', 8, True)
  assert (c.optimizer.schedule, c.data.normalize, c.seed) == ('cosine', 'channel', 0)
  c.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=192):
    out = train.train_and_evaluate(c, str(tmp_path / cell.name))
  assert 'test' in out
  run = [r for r in metrics_io.read_metrics(str(tmp_path / cell.name)) if r['split'] == 'run']
  assert run[0]['step'] == 2
  assert run[0]['params'] == 67_906 + 2 * 9 * 8  # The first conv takes 3 channels, not 1.


@pytest.mark.parametrize('key,value,flag', [('model.depth', 32, 'depths'),
                                            ('model.shortcut', 'B', 'shortcuts'),
                                            ('seed', 3, 'seeds')])
def test_an_override_of_what_the_grid_sets_is_refused(key, value, flag):
  ab = ablation_config.get_config('quick')
  *parents, leaf = key.split('.')
  node = ab.overrides
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=rf'config.overrides.{key} would give every '
                     rf'cell one .*: the grid sets each cell\'s; give --config.{flag} instead'):
    depth_ablation.grid(ab)
  with pytest.raises(ValueError, match='overrides.optimizer.momentun is not a key'):
    config_lib.sweep_overrides({'optimizer': {'momentun': 0.8}})


def test_no_paper_table_beside_cells_of_another_data_set(capsys):
  ab = ablation_config.get_config('paper')
  saved = depth_ablation.saved_ablation(ab, 'cifar10')
  assert saved.paper_table == 'cifar10' and capsys.readouterr().out == ''
  assert saved.overrides.to_dict() == {'log_every_steps': 200}  # No unset placeholders.
  ab.overrides.data.name = 'cifar100'
  saved = depth_ablation.saved_ablation(ab, 'cifar100')
  assert saved.overrides.data.name == 'cifar100'
  assert capsys.readouterr().out == ('The cells train on cifar100: the report leaves out the '
                                     'paper\'s errors, which are of cifar10.\n')
  assert report.paper_table_for(saved, 'cifar100') == ''
  assert report.paper_table_for(saved, '') == 'cifar10'  # Cells of an unknown data set.
  imagenet = depth_ablation.saved_ablation(ablation_config.get_config('imagenet'), 'imagenet2012')
  assert report.paper_table_for(imagenet, 'imagenet2012') == 'imagenet'
  assert capsys.readouterr().out == ''


def test_no_worker_is_refused_not_taken_for_one(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/sweep',
                        '--parallel=0'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert 'flag --parallel=0: 0 is not a positive integer' in out.stderr
  assert not os.path.exists(tmp_path / 'sweep')


@pytest.mark.parametrize('cells, error', [
    ('plain-20-seed0,resnetA-20-seed0', '--cells=plain-20-seed0,resnetA-20-seed0 mixes '
                                        'depths or nets: one command trains the seeds of one'),
    ('plain-20-seed1,plain-20-seed1', '--cells names plain-20-seed1 twice'),
    ('plain-21-seed0', "No cell named 'plain-21-seed0' in this grid: --dry_run lists them."),
    ('', '--cells names no cell: name the cells to run (--dry_run lists them), or leave '
         'the flag out to run the grid.')])
def test_cells_one_process_cannot_train_together_are_refused(tmp_path, cells, error):
  """Trained as one unit, a plain and a residual cell got the first one's config in both
  directories (a residual cell holding a plain net's run). An empty list (a job array's
  unset variable) is not the whole grid."""
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/sweep',
                        f'--cells={cells}'], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(f'error: {error}')
  assert not os.path.exists(tmp_path / 'sweep')


def test_two_of_dry_run_estimate_and_report_only_are_refused(tmp_path):
  """Each does one thing (one of them used to win without a word)."""
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/sweep',
                        '--estimate', '--report_only'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      'error: --estimate and --report_only each do something else: give one of them.')
  assert os.listdir(tmp_path) == []


def test_a_report_of_a_missing_sweep_directory_is_refused_and_makes_nothing(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/sweeep',
                        '--report_only'], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: There is no sweep directory {tmp_path}/sweeep: give --report_only the '
      '--workdir the sweep ran in.')
  assert os.listdir(tmp_path) == []


def test_a_runs_directory_and_a_sweeps_are_not_taken_for_each_other(tmp_path):
  run = tmp_path / 'plain-20-seed0'  # A cell's directory given as the sweep's, say.
  run.mkdir()
  (run / 'config.json').write_text('{}')
  for extra in ([], ['--report_only']):
    out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                          '--config=configs/ablation.py:quick', f'--workdir={run}', *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"error: {run} is a single run's directory (it has a config.json), not a sweep's: "
        'give the sweep a directory of its own, such as runs/ablation.'], out.stderr[-2000:]
    assert os.listdir(run) == ['config.json']  # No ablation.json, no cells written into it.
  from resnet_jax import train
  (tmp_path / 'ablation.json').write_text('{}')
  with pytest.raises(config_lib.ConfigError, match=f"^{tmp_path} is a depth-ablation sweep's "
                     'directory'):
    train.train_and_evaluate(config_lib.base_config(), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['ablation.json', 'plain-20-seed0']


def test_a_sweep_into_an_unwritable_workdir_is_refused_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('not a directory')
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation',
                        '--config=configs/ablation.py:quick', f'--workdir={tmp_path}/file'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: The workdir {tmp_path}/file is a file, not a directory: choose another '
      '--workdir.')


def test_a_second_driver_of_one_shard_is_refused_before_it_writes(tmp_path):
  workdir = str(tmp_path / 'sweep')
  os.makedirs(workdir)
  cmd = [sys.executable, '-m', 'experiments.depth_ablation',
         '--config=configs/ablation.py:quick', f'--workdir={workdir}']
  with run_dir.exclusive([workdir], '.lock-shard0of1'):  # The first driver, running.
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f'error: Another process (pid {os.getpid()}) is running in {workdir}: wait for it '
        f'to end or stop it, or choose another --workdir.')
    assert sorted(os.listdir(workdir)) == ['.lock-shard0of1']  # Nothing written.


def test_a_cell_that_kept_nothing_takes_the_sweeps_config(tmp_path):
  """A cell whose attempt failed before it logged or saved anything holds no run of its
  old config: the sweep's is not refused there (it is, once the cell has kept a record)."""
  cfg = tiny_ablation(tmp_path, str(tmp_path / 'tfds'), shortcuts=('A',), seeds=(0,),
                      steps=2, eval_every=0)
  ablation = depth_ablation.load_config_file(str(cfg)).get_config()
  cells = depth_ablation.grid(ablation)
  celldir = tmp_path / 'sweep' / cells[0].name
  os.makedirs(celldir / 'checkpoints')
  old = depth_ablation.cell_config(ablation, cells[0])
  old.num_train_steps = 3
  (celldir / 'config.json').write_text(old.to_json_best_effort())
  depth_ablation.check_cell_configs(ablation, cells, str(tmp_path / 'sweep'))
  (celldir / 'metrics.jsonl').write_text('{"step": 2, "split": "train", "loss": 2.3}\n')
  with pytest.raises(config_lib.ConfigError,
                     match=r'holds a run of another config \(num_train_steps: 3 -> 2\)'):
    depth_ablation.check_cell_configs(ablation, cells, str(tmp_path / 'sweep'))


def test_a_failing_cell_stops_the_sweep_naming_its_log(tmp_path):
  local = datasets.local_fashion_mnist_dir(str(tmp_path / 'tfds'))
  os.makedirs(local)
  with open(os.path.join(local, 'dataset_info.json'), 'w') as f:
    f.write('{corrupt')  # Found by the cell's worker, not before.
  cfg = tiny_ablation(tmp_path, str(tmp_path / 'tfds'), shortcuts=('A',), seeds=(0,),
                      steps=2, eval_every=0)
  workdir = str(tmp_path / 'sweep')
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
                        f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  log = os.path.join(workdir, 'resnetA-8-seed0.log')
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: resnetA-8-seed0 failed (exit 1): The imported Fashion-MNIST in '
      f'{local} is unreadable (ParseError): delete that directory and run again to import '
      f'it afresh. (log: {log})')


@pytest.mark.parametrize('how', ['sigterm_to_driver', 'ctrl_c'])
def test_a_stopped_sweep_checkpoints_its_cells(fashion_data_dir, tmp_path, how):
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('A',), seeds=(0,),
                      steps=5000, eval_every=0)
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.depth_ablation',
                           f'--config={cfg}', f'--workdir={workdir}'], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  log = os.path.join(workdir, 'resnetA-8-seed0.log')
  try:
    for _ in range(1200):  # Until the cell trains (10 minutes at most).
      if (os.path.exists(log) and 'step 10/' in open(log).read()) or proc.poll() is not None:
        break
      time.sleep(0.5)
    if how == 'ctrl_c':  # SIGINT to the driver and its workers, as a terminal sends it.
      os.killpg(proc.pid, signal.SIGINT)
    else:  # To the driver alone (a scheduler's stop): it stops its workers.
      proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:  # Leave nothing training behind a failed test.
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 1 and 'Interrupted: finished cells are kept' in err
  assert 'Stopped by SIGTERM' in open(log).read()
  assert depth_ablation.cell_status(os.path.join(workdir, 'resnetA-8-seed0')) == 'partial'


def test_a_diverging_cell_is_recorded_and_the_sweep_goes_on(fashion_data_dir, tmp_path):
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none',), seeds=(0,), steps=6,
                      eval_every=0)
  cfg.write_text(cfg.read_text().replace("'batch_size': 32",
                                         "'optimizer': {'learning_rate': 1e38}, 'batch_size': 32"))
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
                        f'--workdir={workdir}'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert 'plain-8-seed0: diverged in' in out.stdout
  with open(os.path.join(workdir, 'plain-8-seed0', 'diverged.json')) as f:
    assert json.load(f)['step'] in (2, 4, 6)  # A logging step: log_every_steps is 2.
  with open(os.path.join(workdir, 'results.csv')) as f:
    row = next(csv.DictReader(f))
  assert row['diverged'] == '1'
  events = glob.glob(os.path.join(workdir, 'plain-8-seed0', 'events.out.tfevents.*'))
  assert any(b'hparams' in open(e, 'rb').read() for e in events)  # TensorBoard's HParams.
