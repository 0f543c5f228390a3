"""Benchmark of the train step: compile s, step ms, images/s, FLOP/s, memory; the pipeline.

  python -m experiments.benchmark --models=resnet20,plain20,resnet1202 --batch_sizes=128

Each (model, batch size, remat) row runs in its own process, so its peak memory is
its own. Prints a table, the issue's targets as ratios within this one run, the
hours the paper and extreme ablation presets would train at these step times, and
writes everything as JSON. Models: `resnetN` / `plainN` (CIFAR family, 32x32x3),
`quick-resnetN` / `quick-plainN` (the quick preset's width-8 nets on 28x28x1),
`resnet50` / `plain50` (ImageNet family at 64x64x3). A PyTorch column is added where
torch is installed: the same net in eager PyTorch (peers/torch_resnet.py), each row's
process alternating with its twin's for --rounds rounds; `--lesson` (default) trains
the lesson's model one epoch beside its own Keras program (peers/keras_lesson.py). Each
peer runs as its users run it (resnet_jax/peer_process.py) and its environment is printed
beside its figures. The measuring lives in resnet_jax.benchmark and
resnet_jax.lesson_benchmark.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from resnet_jax import benchmark
from resnet_jax import cli
from resnet_jax import lesson_benchmark

_MODELS = flags.DEFINE_list(
    'models', 'quick-resnet20,quick-plain20,quick-resnet56,quick-plain56,resnet20,plain20,'
    'resnet56,plain56,resnet110,plain110,resnet1202,plain1202,resnet50',
    'Models to time: resnetN / plainN (CIFAR, N = 6n+2), quick-resnetN / quick-plainN (the '
    'quick preset\'s width-8 nets on 28x28x1), resnet50 / plain50 (ImageNet family at '
    '64x64).')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128'], 'Global batch sizes.')
_REMAT = flags.DEFINE_list('remat_models', ['resnet1202'],
                           'Models also measured with model.remat=True (memory).')
_UNROLLED = flags.DEFINE_list(
    'unrolled_models', 'quick-resnet20,quick-plain20,quick-resnet56,quick-plain56,resnet20,'
    'plain20,resnet56,plain56', 'Models also measured with model.scan_blocks=False (as the '
    'quick preset trains its nets; the ratio to PyTorch takes the faster row).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds of each row, alternating with its '
                               'PyTorch twin; the fastest round of each is reported.',
                               lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per row (the median is reported).',
                              lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.', lower_bound=0)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'float16'],
                           'model.dtype: the compute dtype (parameters stay float32).')
_CONV = flags.DEFINE_enum('conv_impl', 'onednn', ['fast', 'onednn', 'xla'],
                          'model.conv_impl (onednn: fast where the extension cannot run).')
_CPU_CONV = flags.DEFINE_enum('cpu_convolutions', 'eigen', ['eigen', 'default'],
                              "config.cpu_convolutions: XLA:CPU's Eigen kernels or jaxlib's choice.")
_TORCH = flags.DEFINE_integer('torch_max_depth', 110, 'Add the PyTorch column (where torch '
                              'is installed) for CIFAR models up to this depth; 0: never.')
_VMAPPED = flags.DEFINE_enum(
    'time_vmapped_seeds', 'auto', ['auto', 'on', 'off'], 'Also time each CIFAR model with '
    'the paper preset\'s seeds in one vmapped program, as the depth ablation trains them '
    'there: auto = where the default JAX backend is not the CPU (as its --vmap_seeds).')
_PIPELINE = flags.DEFINE_bool('pipeline', True, 'Measure the input pipeline on its own.')
_LESSON = flags.DEFINE_bool('lesson', True, 'Also train the lesson\'s model one epoch '
                            '(configs/seed_mnist.py) beside its own Keras program '
                            '(peers/keras_lesson.py; needs TensorFlow): a few minutes.')
_LESSON_RUNS = flags.DEFINE_integer('lesson_runs', 1, 'Epochs of each side for --lesson, '
                                    'alternating (the accuracy criterion needs 3 or more).',
                                    lower_bound=1)
_PEAK = flags.DEFINE_float('peak_gflops', 0.0, 'The machine\'s peak GFLOP/s (0: estimated '
                           'for CPUs from cores x clock x FMA width).', lower_bound=0)
_OUTPUT = flags.DEFINE_string('output', 'runs/benchmark/benchmark.json', 'The JSON file.')
_ROW = flags.DEFINE_string('row', None, 'Internal: measure one row (JSON) and print it.')


def main(argv):
  cli.refuse_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  if _ROW.value:
    print(json.dumps(benchmark.measure_row(json.loads(_ROW.value))))
    return
  try:  # Bad names, batch sizes and output paths fail in one line, before anything runs.
    if not _MODELS.value:
      raise ValueError('--models is empty: name the models to time, as in '
                       '--models=resnet20,plain20.')
    benchmark.check_output(_OUTPUT.value)
    for name in _MODELS.value + _REMAT.value + _UNROLLED.value:
      benchmark.parse_model(name)
    for b in _BATCH_SIZES.value:
      if not b.isdigit() or int(b) < 1:
        raise ValueError(f'--batch_sizes takes positive integers, not {b!r}.')
  except ValueError as e:
    sys.exit(f'error: {e}')
  seeds = benchmark.vmapped_seeds(_VMAPPED.value)
  plan = benchmark.plan(_MODELS.value, _BATCH_SIZES.value, _REMAT.value, _UNROLLED.value,
                        seeds, steps=_STEPS.value, warmup=_WARMUP.value, dtype=_DTYPE.value,
                        conv_impl=_CONV.value, cpu_convolutions=_CPU_CONV.value)
  rows = []
  for i, row in enumerate(plan, 1):
    vmapped = f' x {row["seeds"]} seeds' if row['seeds'] > 1 else ''
    print(f'[{i}/{len(plan)}] {row["model"]} batch {row["batch_size"]}'
          f'{" remat" if row["remat"] else ""}{"" if row["scan"] else " unrolled"}'
          f'{vmapped} ...', end=' ', flush=True)
    result = benchmark.measure(row, _TORCH.value, _ROUNDS.value)
    rows.append(result)
    print(result.get('error') or f'compile {result["compile_s"]:.1f} s, step '
          f'{result["step_ms"]:.0f} ms, {result["images_per_second"]:.0f} img/s, '
          f'peak {result["peak_rss_gib"]:.1f} GiB', flush=True)
    benchmark.save(_OUTPUT.value, rows, None, None)
  pipeline = None
  if _PIPELINE.value:
    print('input pipeline ...', end=' ', flush=True)
    pipeline = benchmark.pipeline_images_per_second(int(_BATCH_SIZES.value[0]))
    print(f'{pipeline["pipeline_images_per_second"]:.0f} img/s', flush=True)
  lesson = None
  if _LESSON.value:
    print(f'the lesson\'s model and its Keras program, {_LESSON_RUNS.value} epoch(s) each ...',
          flush=True)
    lesson = lesson_benchmark.compare(os.path.join(os.path.dirname(
        os.path.abspath(_OUTPUT.value)), 'lesson'), runs=_LESSON_RUNS.value)
  peak = benchmark.machine_peak_gflops(_PEAK.value)
  hours = benchmark.print_summary(rows, pipeline, peak, seeds)
  for line in lesson_benchmark.lines(lesson) if lesson else ():
    print(line)
  benchmark.save(_OUTPUT.value, rows, pipeline, peak, hours, lesson)
  print(f'Wrote {_OUTPUT.value}.')


if __name__ == '__main__':
  app.run(main)
