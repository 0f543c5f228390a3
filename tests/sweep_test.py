"""The depth ablation's sweep: the grid, shards, presets, the estimate, the driver, its
workers and ETA, and tiny sweeps end to end (with their report)."""

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

import numpy as np
import pytest

from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import durations
from resnet_jax import metrics_io
from resnet_jax import run_dir
from resnet_jax.analysis import layers
from resnet_jax.analysis import report
from resnet_jax.analysis import results
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import cells as cells_lib
from resnet_jax.sweep import commands
from resnet_jax.sweep import devices as devices_lib
from resnet_jax.sweep import estimate as estimate_lib
from resnet_jax.sweep import runner
from resnet_jax.sweep import status as status_lib
from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'configs'))
import ablation as ablation_config  # noqa: E402  pylint: disable=g-import-not-at-top


def test_quick_grid_and_shards():
  ab = ablation_config.get_config('quick')
  cells = cells_lib.grid(ab)
  assert len(cells) == len(ab.depths) * len(ab.seeds) * 2
  assert len({c.name for c in cells}) == len(cells)
  config = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'none', 1))
  assert (config.model.depth, config.model.shortcut, config.seed) == (56, 'none', 1)
  assert config.model.num_filters == 8 and config.num_train_steps == 300
  # One recipe for the plain net and its residual twin: the ordinary classifier.
  twin = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'A', 1))
  assert not config.model.zero_init_head and not twin.model.zero_init_head
  assert (config.optimizer.warmup_steps, config.optimizer.warmup_kind) == (30, 'linear')


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_shards_cover_the_grid_once_and_balance_depth(together):
  paper = cells_lib.grid(ablation_config.get_config('paper'))
  quick = cells_lib.grid(ablation_config.get_config('quick'))
  for cells, count in ((paper, 1), (paper, 2), (paper, 3), (paper, 10), (paper, 11),
                       (paper, 50), (paper, 64), (quick, 3), (quick, 16)):
    shards = [cells_lib.shard(cells, i, count, together) for i in range(count)]
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
  layers = lambda count: sorted(sum(c.depth for c in cells_lib.shard(paper, i, count,
                                                                           together))
                                for i in range(count))
  assert layers(2) == [1310, 1310]  # Paper on two machines.
  # On three: round-robin over cells gave 862/928/830 and split every group's seeds.
  assert layers(3) == ([870, 870, 880] if together else [872, 874, 874])
  # On ten: a vmapped group each (ResNet-110's 5 seeds: 550 layers), or, one by one,
  # a cell of each depth each.
  assert max(layers(10)) == (550 if together else 262)
  with pytest.raises(config_lib.ConfigError, match=r'^--shard_index 3 must be in \[0, '):
    cells_lib.shard(paper, 3, 3)


def test_a_grid_with_no_cells_or_a_repeated_value_is_refused():
  ab = ablation_config.get_config('quick')
  ab.seeds = (0, 1, 0)  # Two runs of resnetA-20-seed0 would share one directory.
  with pytest.raises(config_lib.ConfigError, match=r'^config.seeds repeats 0: give each'):
    cells_lib.grid(ab)
  ab.seeds = ()
  with pytest.raises(config_lib.ConfigError, match='^The grid has no cells'):
    cells_lib.grid(ab)
  ab.seeds, ab.depths, ab.exclude = (0,), (20,), ('none-20', 'A-20')
  with pytest.raises(config_lib.ConfigError, match='^The grid has no cells'):
    cells_lib.grid(ab)
  ab = ablation_config.get_config('quick')
  ab.depths = ('abc',)  # What --config.depths=abc sets.
  with pytest.raises(config_lib.ConfigError, match=r"^config.depths holds 'abc': give integers"):
    cells_lib.grid(ab)
  ab = ablation_config.get_config('quick')
  ab.shortcuts = (1, 2)
  with pytest.raises(config_lib.ConfigError, match=r'^config.shortcuts holds 1: give names'):
    cells_lib.grid(ab)


def test_names_given_as_one_comma_separated_string_are_split():
  """What --config.shortcuts=none,B and --config.exclude=none-20,B-32 set: one string each
  (ml_collections splits only numbers), once taken as a shortcut named 'none,B'."""
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds, ab.shortcuts, ab.exclude = (20, 32), (0,), ('none, B',), ('none-20,B-32',)
  assert [c.name for c in cells_lib.grid(ab)] == ['resnetB-20-seed0', 'plain-32-seed0']
  ab.exclude = ('plain-20',)  # A cell's name, not its SHORTCUT-DEPTH: it excluded nothing.
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config.exclude holds 'plain-20': name each \(net, depth\)"):
    cells_lib.grid(ab)


def test_a_cell_its_run_config_refuses_is_named_in_one_line():
  ab = ablation_config.get_config('quick')
  ab.run_config = 'seed_mnist.py'  # The lesson's model: it takes no depth.
  with pytest.raises(config_lib.ConfigError, match=r"^plain-20-seed0: seed_mnist.py: "
                                                   r"Unknown config argument 'depth=20'"):
    ablation_lib.cell_config(ab, cells_lib.grid(ab)[0])


def test_workers_get_gpus_of_their_own_or_share_one_and_one_compilation_cache(tmp_path):
  envs = lambda n, devices, environ=None, sizes=(128, 1000): devices_lib.worker_envs(
      str(tmp_path), n, devices_lib.Devices(*devices), sizes,
      {'PATH': '/bin'} if environ is None else environ)
  cache = {'PATH': '/bin', 'JAX_COMPILATION_CACHE_DIR': str(tmp_path / '.jax_cache')}
  # CPU workers share the cores: oneDNN's threads too, unless the user set them; and
  # glibc backs XLA's buffers with huge pages, after the user's own tunables.
  threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
  huge = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert envs(2, ('cpu', 1)) == [dict(cache, OMP_NUM_THREADS=threads, **huge)] * 2
  assert envs(1, ('cpu', 1)) == [dict(cache, **huge)]
  assert envs(2, ('cpu', 1), {'OMP_NUM_THREADS': '2'})[1]['OMP_NUM_THREADS'] == '2'
  assert envs(1, ('cpu', 1), {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})[0][
      'GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  assert envs(1, ('cpu', 1), {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})[0][
      'GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=0'  # The user's choice stands.
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
  tpu = devices_lib.Devices('tpu', 4)
  devices_lib.check_parallel(1, tpu)
  devices_lib.check_parallel(4, devices_lib.Devices('cuda', 1))
  with pytest.raises(config_lib.ConfigError, match=r'^--parallel=2 on a TPU VM: .* run '
                     r'--parallel=1 .* or spread the grid over several VMs'):
    devices_lib.check_parallel(2, tpu)


def preset_cells(preset: str):
  """(cell, its validated run config) for every cell of an ablation preset."""
  ab = ablation_config.get_config(preset)
  configs = [(cell, ablation_lib.cell_config(ab, cell)) for cell in cells_lib.grid(ab)]
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
  extreme = [c.name for c in cells_lib.grid(ablation_config.get_config('extreme'))]
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
PAPER_ARCHITECTURES = [c for c in cells_lib.grid(ablation_config.get_config('paper'))
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
  c = ablation_lib.cell_config(ablation_config.get_config('paper'), cell)
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
  train_rows = [r for r in metrics_io.read_records(str(tmp_path / cell.name))
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
    assert ablation_lib.cell_steps(c) == 111_690  # 90 epochs of 1,271,167 images.


def test_cell_steps_are_the_presets_run_lengths_without_reading_data():
  """What --estimate multiplies a step's time by: each preset's steps, from its config
  and its data set's known size (the README's counts)."""
  for preset, steps in (('quick', 300), ('full', 8_580), ('paper', 64_000)):
    for cell, c in preset_cells(preset):
      assert ablation_lib.cell_steps(c) == steps, (preset, cell.name)


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_an_estimate_times_each_depth_and_net_once_and_counts_every_cell(together,
                                                                         monkeypatch, capsys):
  from resnet_jax import timing
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds = [8], [0, 1]
  ab.overrides.num_train_steps = 60  # The arithmetic below.
  timed, time_train_step = [], timing.time_train_step

  def recorded(config, image_shape, num_classes, seeds, steps, warmup):
    out = time_train_step(config, image_shape, num_classes, seeds, steps, warmup)
    timed.append((config.model.shortcut, image_shape, seeds, out['step_s']))
    return out
  monkeypatch.setattr(timing, 'time_train_step', recorded)
  total, left = estimate_lib.estimate(ab, cells_lib.grid(ab), together, steps=2)
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
  assert status_lib.cell_status(str(cell)) == 'new'
  (cell / 'checkpoints' / '60').mkdir(parents=True)
  assert status_lib.cell_status(str(cell)) == 'partial'
  whole = '{"step": 60, "split": "train", "loss": 0.5}\n{"step": 60, "split": "run", "x": 1}\n'
  (cell / 'metrics.jsonl').write_text(whole[:-8])
  assert status_lib.cell_status(str(cell)) == 'partial'
  (cell / 'metrics.jsonl').write_text(whole)
  assert status_lib.cell_status(str(cell)) == 'done'
  (cell / 'diverged.json').write_text('{"step": 4}')
  assert status_lib.cell_status(str(cell)) == 'diverged'


@pytest.mark.parametrize('together', [True, False], ids=['vmapped_seeds', 'one_by_one'])
def test_an_estimate_counts_what_the_cells_in_the_workdir_have_left(together, tmp_path,
                                                                   monkeypatch, capsys):
  """A finished cell has nothing left, a partly trained one the steps past its newest
  checkpoint; a group of vmapped seeds trains from the step its unfinished seeds share."""
  from resnet_jax import timing
  ab = ablation_config.get_config('quick')
  ab.depths, ab.seeds = [8], [0, 1]
  ab.overrides.num_train_steps = 60  # The arithmetic below.
  monkeypatch.setattr(timing, 'time_train_step',
                      lambda *args, **kwargs: {'step_s': 0.5, 'compile_s': 1.0})
  (tmp_path / 'plain-8-seed0').mkdir()
  (tmp_path / 'plain-8-seed0' / 'metrics.jsonl').write_text('{"step": 60, "split": "run"}\n')
  for name in ('20', '40', '60.orbax-checkpoint-tmp-1'):  # The last one never completed.
    (tmp_path / 'plain-8-seed1' / 'checkpoints' / name).mkdir(parents=True)
  total, left = estimate_lib.estimate(ab, cells_lib.grid(ab), together, steps=1,
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
  estimate_lib.estimate(ab, cells_lib.grid(ab), together=False, steps=1)
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
  from resnet_jax import train
  from resnet_jax.analysis import compare
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
  cell = next(c for c in cells_lib.grid(ab) if c.name == 'resnetA-18-seed0')
  c = ablation_lib.cell_config(ab, cell)
  c.data.image_size, c.data.validation_size, c.num_train_steps = 32, 8, 1
  c.batch_size, c.eval_batch_size, c.log_every_steps = 8, 8, 1
  c.model.dtype = 'float32'  # bfloat16 compiles slower on CPU; train_test checks it.
  c.data.data_dir = str(tmp_path / 'tfds')
  celldir = str(tmp_path / cell.name)
  with tfds.testing.mock_data(num_examples=24):
    out = train.train_and_evaluate(c, celldir)
    a = layers.cell_analysis(celldir, num_examples=6)
    pred = compare.predictions(celldir, 'test')
  assert 'test' in out and 'validation' in out
  assert len(a['grad_norm_init']) == len(a['grad_norm_final']) == 8  # Blocks: 2+2+2+2.
  assert len(a['response_std_final']) == 1 + 2 * 8  # The stem, two 3x3 layers a block.
  assert np.all(np.isfinite(a['grad_norm_init'])) and a['examples'] == 6
  # The streamed test split (ImageNet's validation; mock: 24 images), as the run scored it.
  assert len(pred['predicted']) == len(pred['labels']) == 24 and len(pred['class_names']) == 1000
  assert np.isclose((pred['predicted'] == pred['labels']).mean(), out['test']['accuracy'])


def test_a_grid_no_model_can_take_fails_in_one_line_before_any_cell_starts(
    fashion_data_dir, tmp_path):
  """The driver imports no JAX: its workers check the models' own rules (a depth, here)
  before any trains, and the driver says what they found."""
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none', 'A'), seeds=(0,),
                      steps=2, eval_every=2)
  workdir = tmp_path / 'sweep'
  out = subprocess.run([sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
                        f'--workdir={workdir}', '--config.depths=8,9', '--parallel=2'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: CIFAR ResNet depth must be 6n+2') and 'got 9' in last
  assert 'started' not in out.stdout
  assert not [d for d in os.listdir(workdir) if d.endswith(('-8-seed0', '-9-seed0'))]


def tiny_ablation(tmp_path, data_dir, shortcuts, seeds, steps, eval_every, variants=None):
  """Writes an ablation config of depth-8, width-4 cells on the small Fashion-MNIST;
  without `variants` it has no such key, as a sweep's config from before them."""
  cfg = tmp_path / 'tiny_ablation.py'
  cfg.write_text(f'''
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.preset, c.run_config, c.depths = 'tiny', 'fashion_mnist.py', (8,)
  c.shortcuts, c.seeds = {shortcuts!r}, {seeds!r}
  c.analysis_examples, c.paper_table, c.exclude = 32, False, ()
  {f'c.variants = {variants!r}' if variants else ''}
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
  # Python's import log (the driver's stderr; the workers' goes to their logs) shows that
  # the driver, report included, imports no JAX: its workers do the work that needs it.
  out = subprocess.run([sys.executable, '-X', 'importtime'] + cmd[1:]
                       + ['--parallel', '2', '--progress_every', '0'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert re.search(r'\| +resnet_jax\.sweep\.runner$', out.stderr, re.M)  # The log is read.
  assert not re.findall(r'\| +(jax|flax|optax|orbax|tensorflow)$', out.stderr, re.M)
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
  analyses = json.load(open(os.path.join(workdir, run_dir.SWEEP_LAYER_ANALYSES)))
  assert len(analyses[0]['response_std_final']) == 7  # Stem + 2 per block, depth 8.
  assert len(analyses[0]['grad_norm_init']) == 3
  assert 'response_std_init' not in analyses[0]  # Placeholder BN statistics at init.
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-2000:]
  assert '2 finished, 0 to run' in again.stdout
  # Another budget into the same directory is refused, not reported as this sweep's.
  with open(os.path.join(workdir, 'results.md')) as f:
    table = f.read()
  other = subprocess.run(cmd + ['--config.overrides.num_train_steps=6'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert other.returncode == 1
  assert other.stderr.strip().splitlines()[-1] == (
      f'error: {workdir}/plain-8-seed0 holds a run of another config (num_train_steps: '
      f'4 -> 6): give this sweep a new --workdir (or move that cell away to run it again).')
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.read() == table
  # Checkpoints deleted to free disk: the report keeps each cell's analysis; a cell with
  # neither is left out of the analysis figures, named, and the report is still written.
  import shutil
  for name in ('plain-8-seed0', 'resnetA-8-seed0'):
    shutil.rmtree(os.path.join(workdir, name, 'checkpoints'))
  ablation = results.read_ablation(workdir)
  report.write_report(workdir, ablation)
  assert json.load(open(os.path.join(workdir, run_dir.SWEEP_LAYER_ANALYSES))) == analyses
  os.remove(os.path.join(workdir, 'plain-8-seed0', run_dir.LAYER_ANALYSIS_FILE))
  report.write_report(workdir, ablation)
  assert 'No layer analysis of plain-8-seed0: ' in capsys.readouterr().out
  kept = json.load(open(os.path.join(workdir, run_dir.SWEEP_LAYER_ANALYSES)))
  assert [a['shortcut'] for a in kept] == ['A']


def test_eta_counts_the_running_cells_and_the_queue_per_worker():
  eta = runner.eta_seconds
  # Two workers, one free, the other about to finish; two depth-56 cells queued: one each.
  assert eta(50.0, [0.0], [56, 56], 2) == 56 * 50.0
  # Queued cells go to whichever worker frees first: 10 left; 20, 20, 20 -> 40.
  assert eta(1.0, [10.0], [20, 20, 20], 2) == 40.0
  assert eta(1.0, [-5.0], [], 2) == 0.0  # A cell slower than expected: nothing negative.
  assert eta(2.0, [], [8, 8, 8], 1) == 48.0
  assert eta(2.0, [], [], 2) == 0.0


def test_eta_leaves_out_the_time_of_resumed_cells():
  clock = runner.Clock(workers=2)
  # A depth-56 cell resumed near its end took 100 s: no measure of a whole cell's time.
  clock.finished(56, 100.0, resumed=True)
  assert clock.eta([(20, 300.0, None)], []) is None
  assert clock.eta([], []) == 0.0  # Nothing left: no estimate needed.
  clock.finished(20, 1000.0, resumed=False)  # 50 s per layer.
  # The running ResNet-20 has 600 of its 1,000 s left; a queued depth-56 cell takes 2,800.
  assert clock.eta([(20, 400.0, None)], [56]) == 2800.0
  assert clock.eta([(20, 400.0, None)], []) == 600.0


def test_a_cells_progress_is_read_from_its_last_training_record(tmp_path):
  cell = tmp_path / 'resnetA-56-seed0'
  assert status_lib.progress(str(cell), 8580) is None  # No directory yet.
  cell.mkdir()
  record = lambda step, split, **kw: json.dumps({'step': step, 'split': split, **kw}) + '\n'
  (cell / 'metrics.jsonl').write_text(record(600, 'train', loss=0.39, steps_per_second=0.66))
  assert status_lib.progress(str(cell), 8580) == (600, 8580, (8580 - 600) / 0.66)
  with open(cell / 'metrics.jsonl', 'a') as f:
    f.write(record(700, 'train', loss=0.37, steps_per_second=0.5))
    f.write(record(700, 'validation', loss=0.37))
    f.write('{"step": 800, "split": "tr')  # A record being written: not read.
  assert status_lib.progress(str(cell), 8580) == (700, 8580, (8580 - 700) / 0.5)


def test_eta_from_the_running_cells_progress_before_any_has_finished():
  clock = runner.Clock(workers=1)
  assert clock.eta([(56, 100.0, None)], [20]) is None  # No progress line yet.
  # ResNet-56 at step 100 of 1,000 with 900 s left: 1 s a step, 1,000 s a cell, so
  # 1000/56 s per layer; a queued depth-20 cell then takes 357 s.
  eta = clock.eta([(56, 100.0, (100, 1000, 900.0))], [20])
  np.testing.assert_allclose(eta, 900.0 + 20 * 1000 / 56)
  clock.finished(20, 400.0, resumed=False)  # Measured: 20 s per layer.
  # The running unit's own ETA stands; the queue goes at the measured speed.
  assert clock.eta([(56, 100.0, (100, 1000, 900.0))], [20]) == 900.0 + 400.0
  # A log's 0:00:00 (a tiny run) gives a speed of zero: the ETA is what the logs say.
  assert runner.Clock(1).eta([(8, 1.0, (2, 4, 0.0))], [8]) < 1e-6
  assert durations.format_minutes(90.0) == '1.5 min'
  assert durations.format_minutes(9000.0) == '2.5 h'
  assert durations.format_minutes(3.8e6) == '1,055.6 h'


def test_units_group_seeds_only_when_asked():
  cells = [cells_lib.Cell(d, s, seed) for d in (20, 56) for s in ('none', 'A')
           for seed in (0, 1)]
  assert [len(u) for u in cells_lib.units(cells, False)] == [1] * 8
  groups = cells_lib.units(cells, True)
  assert [[c.name for c in u] for u in groups][0] == ['plain-20-seed0', 'plain-20-seed1']
  assert len(groups) == 4 and cells_lib.unit_name(groups[-1]) == 'resnetA-56-seeds0+1'
  cpu, gpu = devices_lib.Devices('cpu', 1), devices_lib.Devices('cuda', 1)
  assert devices_lib.seeds_together('on', cpu) and not devices_lib.seeds_together('off', gpu)
  assert devices_lib.seeds_together('auto', gpu)
  assert not devices_lib.seeds_together('auto', cpu)
  # ImageNet's batches are streamed one seed a process: never together.
  assert not devices_lib.seeds_together('auto', gpu, streamed='imagenet2012')
  with pytest.raises(config_lib.ConfigError, match='only on an in-memory data set, not the '
                                                    'streamed imagenet2012'):
    devices_lib.seeds_together('on', cpu, streamed='imagenet2012')
  assert devices_lib.probe_devices() == cpu  # This machine's JAX sees one CPU.


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
    assert status_lib.cell_status(os.path.join(workdir, cell)) == 'done', cell
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
  takes_value = {'parallel': True, 'dry_run': False, 'shard_index': True, 'num_shards': True,
                 'vmap_seeds': True, 'cells': True, 'worker': False, 'progress_every': True,
                 'estimate': False}
  for own in (['--parallel=2', '--shard_index=1', '--num_shards=2', '--dry_run'],
              ['--parallel', '2', '--shard_index', '1', '--num_shards', '2', '--dry_run'],
              ['-parallel', '2', '--vmap_seeds', 'on', '--nodry_run', '--progress_every',
               '0', '--cells', 'plain-8-seed0', '--noworker']):
    assert commands.passed_flags(before + own + after, takes_value) == before + after, own


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
  cell = cells_lib.grid(ab)[1]
  c = ablation_lib.cell_config(ab, cell)
  assert (c.data.name, c.model.num_filters, c.model.zero_init_head) == ('cifar10', 8, False)
  assert (c.optimizer.schedule, c.data.normalize, c.seed) == ('cosine', 'channel', 0)
  c.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=192):
    out = train.train_and_evaluate(c, str(tmp_path / cell.name))
  assert 'test' in out
  run = [r for r in metrics_io.read_records(str(tmp_path / cell.name)) if r['split'] == 'run']
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
    cells_lib.grid(ab)
  with pytest.raises(ValueError, match='overrides.optimizer.momentun is not a key'):
    ablation_lib.sweep_overrides({'optimizer': {'momentun': 0.8}})


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
  (tmp_path / 'ablation.json').write_text('{}')
  out = subprocess.run([sys.executable, '-m', 'resnet_jax.main',
                        '--config=configs/fashion_mnist.py', f'--workdir={tmp_path}'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr.strip().splitlines() == [
      f"error: {tmp_path} is a depth-ablation sweep's directory (it has an ablation.json): "
      'give the run a directory of its own.'], out.stderr[-2000:]
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
  ablation = ablation_lib.load_config_file(str(cfg)).get_config()
  cells = cells_lib.grid(ablation)
  celldir = tmp_path / 'sweep' / cells[0].name
  os.makedirs(celldir / 'checkpoints')
  old = ablation_lib.cell_config(ablation, cells[0])
  old.num_train_steps = 3
  (celldir / 'config.json').write_text(old.to_json_best_effort())
  ablation_lib.check_cell_configs(ablation, cells, str(tmp_path / 'sweep'))
  (celldir / 'metrics.jsonl').write_text('{"step": 2, "split": "train", "loss": 2.3}\n')
  with pytest.raises(config_lib.ConfigError,
                     match=r'holds a run of another config \(num_train_steps: 3 -> 2\)'):
    ablation_lib.check_cell_configs(ablation, cells, str(tmp_path / 'sweep'))


def test_a_cell_failing_on_bad_input_is_not_tried_again_and_named_with_its_log(tmp_path):
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
  assert 'trying it again' not in out.stdout  # Another try would fail the same way.
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: resnetA-8-seed0 failed: The imported Fashion-MNIST in '
      f'{local} is unreadable (ParseError): delete that directory and run again to import '
      f'it afresh. (log: {log})')


def test_a_dead_workers_reason_is_its_signal_or_its_logs_error_never_progress(tmp_path):
  log = tmp_path / 'unit.log'
  progress = 'step 10/120 | loss 2.33 | 41.0 img/s | ETA 0:00:19\n'
  log.write_text(progress)
  assert runner.death_reason(-9, str(log)) == ('killed by SIGKILL (out of memory?)', False)
  assert runner.death_reason(-15, str(log)) == ('killed by SIGTERM', False)
  assert runner.death_reason(1, str(log)) == ('exit 1, no error in its log', False)
  log.write_text(progress + 'Traceback (most recent call last):\n  File "x.py", line 1\n'
                 '    f()\nRuntimeError: XLA ran out of memory\n')
  assert runner.death_reason(1, str(log)) == ('RuntimeError: XLA ran out of memory', False)
  log.write_text(progress + 'error: The config.json in d differs.\n')
  assert runner.death_reason(1, str(log)) == ('The config.json in d differs.', True)


def _children(pid: int) -> list[int]:
  """The processes whose parent is `pid` (a sweep driver's workers), from /proc."""
  found = []
  for entry in os.listdir('/proc'):
    try:
      with open(f'/proc/{entry}/stat') as f:
        if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
          found.append(int(entry))
    except (OSError, ValueError, IndexError):
      pass
  return found


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/status') as f:
      return 'zombie' not in f.read()
  except OSError:
    return False


def _start_training(tmp_path, data_dir, steps):
  """A one-cell sweep, started and waited for until its cell trains: (process, log)."""
  cfg = tiny_ablation(tmp_path, data_dir, shortcuts=('A',), seeds=(0,), steps=steps,
                      eval_every=0)
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.depth_ablation',
                           f'--config={cfg}', f'--workdir={workdir}'], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  log = os.path.join(workdir, 'resnetA-8-seed0.log')
  for _ in range(1200):  # Until the cell trains (10 minutes at most).
    if (os.path.exists(log) and 'step 6/' in open(log).read()) or proc.poll() is not None:
      break
    time.sleep(0.5)
  return proc, log


def test_a_worker_killed_mid_cell_costs_a_retry_from_its_checkpoint(fashion_data_dir,
                                                                   tmp_path):
  proc, log = _start_training(tmp_path, fashion_data_dir, steps=40)
  try:
    (worker,) = _children(proc.pid)
    os.kill(worker, signal.SIGKILL)  # As the kernel's OOM killer does.
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, err[-3000:]
  assert ('resnetA-8-seed0: its worker died (killed by SIGKILL (out of memory?)); trying '
          'it again from its checkpoint') in out
  assert 'started resnetA-8-seed0 (log: resnetA-8-seed0.log, try 2)' in out
  celldir = os.path.join(str(tmp_path / 'sweep'), 'resnetA-8-seed0')
  assert status_lib.cell_status(celldir) == 'done'
  assert 'Resumed from the checkpoint of step' in open(log).read()


def test_workers_checkpoint_and_stop_soon_after_their_driver_is_killed(fashion_data_dir,
                                                                       tmp_path):
  proc, log = _start_training(tmp_path, fashion_data_dir, steps=5000)
  workers = _children(proc.pid)
  try:
    assert len(workers) == 1
    proc.kill()  # SIGKILL: the driver cannot stop its workers itself.
    proc.communicate(timeout=60)
    for _ in range(120):  # A minute at most.
      if not any(_alive(w) for w in workers):
        break
      time.sleep(0.5)
    else:
      pytest.fail('the workers still run a minute after their driver was killed')
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
  assert 'Stopped by SIGTERM' in open(log).read()
  celldir = os.path.join(str(tmp_path / 'sweep'), 'resnetA-8-seed0')
  assert status_lib.cell_status(celldir) == 'partial'


@pytest.mark.parametrize('how', ['sigterm_to_driver', 'ctrl_c'])
def test_a_stopped_sweep_checkpoints_its_cells(fashion_data_dir, tmp_path, how):
  proc, log = _start_training(tmp_path, fashion_data_dir, steps=5000)
  workdir = str(tmp_path / 'sweep')
  try:
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
  assert status_lib.cell_status(os.path.join(workdir, 'resnetA-8-seed0')) == 'partial'


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


def test_the_time_split_adds_up_the_run_records_and_the_idle_workers(tmp_path):
  cells = [cells_lib.Cell(8, 'none', 0), cells_lib.Cell(8, 'A', 0), cells_lib.Cell(8, 'A', 1)]
  runs = {cells[0]: (30.0, 5.0, 4.0), cells[1]: (40.0, 0.0, 3.0), cells[2]: (40.0, 0.0, 3.0)}
  for cell, (train_s, compile_s, eval_s) in runs.items():
    os.makedirs(tmp_path / cell.name)
    (tmp_path / cell.name / 'metrics.jsonl').write_text(json.dumps(
        {'step': 4, 'split': 'run', 'train_seconds': train_s, 'compile_seconds': compile_s,
         'eval_seconds': eval_s}) + '\n')
  (tmp_path / cells[0].name / 'analysis.json').write_text(json.dumps({'seconds': 6.0}))
  # Two workers for 60 s: one ran plain-8 in 50 s, the other both seeds of ResNet-8 in
  # one program (its train steps and compilation counted once) in 55 s.
  line = runner.time_split(str(tmp_path), [(cells[:1], 50.0), (cells[1:], 55.0)], 60.0, 2)
  assert line == ('Time of the 2 units run (2 workers x 60 s): train steps 70 s (58%), '
                  'compiling 5 s (4%), evaluation 10 s (8%), analysis 6 s (5%), start-up, '
                  'data and checkpoints 14 s (12%), idle workers 15 s (12%).')


def test_shard_index_auto_reads_the_hosts_slot_or_says_what_to_give():
  from resnet_jax.sweep import hosts
  tpu = {'TPU_WORKER_ID': '2', 'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}
  assert hosts.resolve('auto', 'auto', tpu) == (2, 4)
  assert hosts.resolve('auto', '4', tpu) == (2, 4)
  assert hosts.resolve('auto', 'auto', {'SLURM_PROCID': '1', 'SLURM_NTASKS': '3'}) == (1, 3)
  assert hosts.resolve('1', '2', {}) == (1, 2)
  with pytest.raises(config_lib.ConfigError, match=r'^--num_shards=3, but 4 hosts run'):
    hosts.resolve('auto', '3', tpu)
  with pytest.raises(config_lib.ConfigError, match=r'^--shard_index=x: give a whole number'):
    hosts.resolve('x', '2', {})
  # Off a TPU VM the metadata server does not answer: one sentence naming the flags.
  with pytest.raises(config_lib.ConfigError, match=r'--shard_index=I --num_shards=N\.$'):
    hosts.worker_slot({}, metadata_timeout=0.5)


def test_the_same_command_on_every_worker_of_a_slice_runs_the_grid_once(fashion_data_dir,
                                                                       tmp_path):
  """Two local processes stand in for a TPU slice's two workers (TPU_WORKER_ID, as
  `gcloud ... ssh --worker=all` leaves each its own), both running one command."""
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none', 'A'), seeds=(0,),
                      steps=2, eval_every=2)
  cmd = [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
         f'--workdir={tmp_path / "sweep"}', '--shard_index=auto']
  workers = [subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
                                       TPU_WORKER_ID=str(i), TPU_WORKER_HOSTNAMES='w0,w1'))
             for i in range(2)]
  outs = [w.communicate(timeout=600) for w in workers]
  for w, (out, err) in zip(workers, outs):
    assert w.returncode == 0, err[-3000:]
    assert '1 cells in this shard: 0 finished, 1 to run.' in out
  started = sorted(re.search(r'started (\S+)', out).group(1) for out, _ in outs)
  assert started == ['plain-8-seed0', 'resnetA-8-seed0']
  for cell in started:
    assert status_lib.cell_status(str(tmp_path / 'sweep' / cell)) == 'done'
