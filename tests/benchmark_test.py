"""The benchmark's pieces: model names, FLOP counts from XLA, one measured row, targets."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from resnet_jax import benchmark
from resnet_jax import lesson_benchmark
from resnet_jax import models
from tests.conftest import REPO


def test_model_names():
  assert benchmark.parse_model('plain56')[0] == dict(name='cifar_resnet', depth=56,
                                                     num_filters=16, shortcut='none')
  kwargs, shape, classes = benchmark.parse_model('resnet50')
  assert kwargs['name'] == 'imagenet_resnet' and shape == (64, 64, 3) and classes == 1000
  with pytest.raises(ValueError, match='resnetN or plainN'):
    benchmark.parse_model('vgg16')
  with pytest.raises(ValueError, match='6n\\+2'):
    benchmark.parse_model('resnet21')
  # The quick preset's nets: width 8 on Fashion-MNIST's 28x28x1 images.
  assert benchmark.parse_model('quick-plain56') == (
      dict(name='cifar_resnet', depth=56, num_filters=8, shortcut='none'), (28, 28, 1), 10)
  with pytest.raises(ValueError, match='6n\\+2'):
    benchmark.parse_model('quick-resnet21')


@pytest.mark.parametrize('flag,message', [
    ('--models=resnet20,foo', "error: Unknown benchmark model 'foo': use resnetN or plainN "
                              "(quick-resnetN or quick-plainN"),
    ('--remat_models=plain21', "error: Unknown benchmark model 'plain21': the depth of a "),
    ('--batch_sizes=128,big', "error: --batch_sizes takes positive integers, not 'big'."),
    ('--models=', 'error: --models is empty: name the models to time'),
    # An --output that cannot be written failed with a traceback after the first row.
    ('--output=/dev/null/b.json', 'error: --output /dev/null/b.json cannot be written: its '
                                  'directory cannot be made (File exists)'),
    ('--output=TMP', 'error: --output TMP is a directory: name the JSON file to write.'),
])
def test_bad_flags_are_refused_in_one_line_before_any_row(flag, message, tmp_path):
  flag, message = flag.replace('TMP', str(tmp_path)), message.replace('TMP', str(tmp_path))
  out = subprocess.run([sys.executable, '-m', 'experiments.benchmark',
                        f'--output={tmp_path}/b.json', flag], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), lines
  assert not out.stdout and not os.listdir(tmp_path)


def test_preset_hours_at_step_times_linear_in_depth():
  def row(model, step_ms, **kw):
    return dict(dict(model=model, batch_size=128, scan=True, remat=False, step_ms=step_ms), **kw)
  rows = [row('resnet20', 300.0), row('plain56', 660.0),  # 0.01 s per layer + 0.1 s.
          row('resnet56', 9e9, remat=True), row('resnet56', 9e9, batch_size=256),
          dict(model='plain110', batch_size=128, scan=True, remat=False, error='OOM')]
  hours = benchmark.preset_hours(rows)
  # paper: 5 seeds x 64,000 steps x 2 nets x sum over depths 20-110 of (0.01 d + 0.1) s.
  assert hours['paper'] == pytest.approx(5 * 64000 * 2 * (0.01 * 262 + 0.5) / 3600)
  # extreme: plain-110, ResNet-110 and ResNet-1202, 64,000 steps each.
  assert hours['extreme'] == pytest.approx(64000 * (2 * 1.2 + 12.12) / 3600)
  assert benchmark.preset_hours(rows[:1]) == {}  # One depth gives no line.
  # With rows of the paper's 5 seeds in one program (0.02 s per layer + 0.3 s a step):
  # each depth and net of `paper` trains its seeds together; `extreme`, with one seed
  # each, and a grid whose vmapped rows span one depth only, as before.
  vmapped = [row('resnet20', 700.0, seeds=5), row('plain110', 2500.0, seeds=5)]
  hours = benchmark.preset_hours(rows + vmapped)
  assert hours['paper'] == pytest.approx(64000 * 2 * (0.02 * 262 + 5 * 0.3) / 3600)
  assert hours['extreme'] == pytest.approx(64000 * (2 * 1.2 + 12.12) / 3600)
  assert benchmark.preset_hours(rows + vmapped[:1])['paper'] == pytest.approx(
      5 * 64000 * 2 * (0.01 * 262 + 0.5) / 3600)


def test_flops_extrapolated_from_two_depths_equal_xla_on_the_whole_model():
  kwargs = dict(name='cifar_resnet', depth=20, shortcut='A', num_filters=4)
  extrapolated = benchmark._train_step_flops(kwargs, (8, 8, 3), 10, 2)
  # Depth 20 analysed whole (unrolled) by the same XLA cost analysis.
  model = models.create_model(num_classes=10, **dict(kwargs, scan_blocks=False,
                                                     conv_impl='xla'))
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                        train=False))

  def loss(p, bs, x, y):
    logits, _ = model.apply({'params': p, 'batch_stats': bs}, x, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  flops = jax.jit(jax.grad(loss)).lower(
      v['params'], v['batch_stats'], jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32),
      jax.ShapeDtypeStruct((2,), jnp.int32)).cost_analysis()['flops']
  assert extrapolated == pytest.approx(flops, rel=1e-6)


TINY_ROW = dict(model='resnet8', batch_size=8, remat=False, scan=True, steps=1, warmup=0,
                dtype='float32', conv_impl='fast', cpu_convolutions='eigen')


def test_one_row_is_measured_and_the_targets_read_it():
  row = benchmark.measure_row(TINY_ROW)
  assert row['params'] == 75_290 and row['finite']
  assert row['compile_s'] > 0 and row['step_ms'] > 0 and row['gflop_per_step'] > 0
  assert row['images_per_second'] == pytest.approx(8 / row['step_ms'] * 1e3)
  big = dict(row, model='resnet1202', compile_s=row['compile_s'] * 2, xla_memory_gib=30.0)
  small = dict(row, model='resnet20', torch_images_per_second=row['images_per_second'] * 2)
  lines = benchmark.targets([small, big], {'pipeline_images_per_second':
                                           row['images_per_second'] * 10})
  assert any('compile ResNet-1202 / ResNet-20 (batch 8): 2.00x' in l and '(target <= 3x: met)'
             in l for l in lines)
  assert any(l.startswith('resnet20 batch 8 images/s, JAX (scan) / PyTorch: 0.50')
             and 'NOT met' in l for l in lines)
  # Each net that PyTorch timed gets its ratio, the quick preset's nets too.
  quick = dict(row, model='quick-plain56', torch_images_per_second=row['images_per_second'] / 2)
  assert any(l.startswith('quick-plain56 batch 8 images/s, JAX (scan) / PyTorch: 2.00')
             and 'met)' in l for l in benchmark.targets([quick], None))
  assert any('pipeline / ResNet-20 train step images/s: 10.0x' in l and 'met)' in l
             for l in lines)
  assert any('ResNet-1202 batch 8 without remat: peak 30.0 GiB' in l and 'comparison' in l
             for l in lines)
  remat = dict(big, remat=True, xla_memory_gib=30.0)
  assert any('with remat: peak 30.0 GiB' in l and 'NOT met' in l
             for l in benchmark.targets([small, remat], None))
  table = benchmark.table([small], peak=100.0)
  assert '| resnet20 | 8 | scan | 75,290 |' in table
  # Two seeds' steps in one vmapped program (the sweep's --vmap_seeds): per-model
  # parameters, twice the images and FLOPs a step; the targets keep to single rows.
  two = benchmark.measure_row(dict(TINY_ROW, seeds=2))
  assert (two['params'], two['seeds']) == (75_290, 2) and two['finite']
  assert two['images_per_second'] == pytest.approx(16 / two['step_ms'] * 1e3)
  assert two['gflop_per_step'] == pytest.approx(2 * row['gflop_per_step'])
  assert '| resnet8 | 8 | scan x 2 seeds (vmap) | 75,290 |' in benchmark.table([two], None)
  assert benchmark.targets([dict(two, model='resnet20'), big], None) == benchmark.targets(
      [big], None)


def test_a_row_runs_without_tensorflow(tmp_path):
  """The train step and its benchmark need JAX, Flax, Optax, Orbax and ml_collections only,
  as on an accelerator image without TensorFlow, TFDS or TensorBoard (a run's data and
  its events need them)."""
  (tmp_path / 'sitecustomize.py').write_text(
      'import sys\n'
      'class Block:\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      "    if name.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'tensorboard'):\n"
      "      raise ImportError('no ' + name)\n"
      'sys.meta_path.insert(0, Block())\n')
  code = ("import json, sys\n"
          "from resnet_jax import benchmark\n"
          f"row = benchmark.measure_row({TINY_ROW!r})\n"
          "assert benchmark.preset_hours([dict(row, model='resnet20', batch_size=128), "
          "dict(row, model='resnet56', batch_size=128)])['paper'] > 0\n"
          "print(json.dumps([row['finite'], sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'tensorboard'})]))\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, []]


def test_the_lesson_row_reads_both_programs_outputs_and_says_the_targets():
  records = [{'split': 'train', 'step': 844, 'accuracy': 0.8},
             {'split': 'test', 'step': 844, 'accuracy': 0.9012, 'loss': 0.28},
             {'split': 'run', 'step': 844, 'compile_seconds': 5.0, 'train_seconds': 90.0,
              'eval_seconds': 5.0}]
  env = {'tensorflow': '2.21.0', 'keras': '3.13.2', 'onednn': True, 'intra_op_threads': 0,
         'inter_op_threads': 0, 'python': '3.11.7', 'cpu_count': 2, 'variables': {},
         'project_modules': []}
  keras = {'fit_seconds': 60.0, 'evaluate_seconds': 2.0, 'test_accuracy': 0.8956,
           'environment': env}
  s = lesson_benchmark.summary(records, keras, ours_wall=110.0, keras_wall=75.0)
  assert s['lesson_seconds'] == 100.0 and s['keras_seconds'] == 62.0
  assert s['lesson_speed_ratio'] == pytest.approx(0.62)
  speed, accuracy, peer = lesson_benchmark.lines(s)
  assert speed.startswith('lesson model, one epoch, speed JAX / Keras 2.21.0: 0.62 ')
  assert peer == ('Keras ran as: TensorFlow 2.21.0 (Keras 3.13.2), oneDNN on, intra-op '
                  "threads TensorFlow's default, inter-op TensorFlow's default; Python 3.11.7, "
                  '2 cores; thread and kernel variables: none set; modules of this project '
                  'imported: none')
  assert 'whole process 110 s vs 75 s' in speed and speed.endswith('NOT met)')
  assert '(within a point: yes; one run each' in accuracy
  behind = lesson_benchmark.summary(records, dict(keras, test_accuracy=0.88), 1.0, 1.0)
  assert '(within a point: NO; one run each' in lesson_benchmark.lines(behind)[1]
  # Several runs: means, the accuracies' spread, the criterion on the means.
  two = lesson_benchmark.combine([s, behind])
  assert two['runs'] == 2 and two['keras_seconds'] == 62.0
  assert two['lesson_speed_ratio'] == pytest.approx(0.62)  # Of the mean seconds.
  assert two['keras_test_accuracy'] == pytest.approx((0.8956 + 0.88) / 2)
  assert two['keras_test_accuracy_std'] == pytest.approx(0.0078)
  speed, accuracy, _ = lesson_benchmark.lines(two)
  assert speed.startswith('lesson model, one epoch, mean of 2 runs each, speed')
  assert accuracy == ('lesson model test accuracy: JAX 0.9012 +- 0.0000, Keras 0.8878 +- '
                      '0.0078 (within a point: NO)')
  assert lesson_benchmark.lines({'error': 'TensorFlow is not installed'}) == [
      'lesson model against Keras: not measured (TensorFlow is not installed)']
