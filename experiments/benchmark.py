"""Benchmark of the train step: compile s, step ms, images/s, FLOP/s, memory; the pipeline.

  python -m experiments.benchmark --models=resnet20,plain20,resnet1202 --batch_sizes=128

Each (model, batch size, remat) row runs in its own process, so its peak memory is
its own. Prints a table, the issue's targets as ratios within this one run, the
hours the paper and extreme ablation presets would train at these step times, and
writes everything as JSON. Models: `resnetN` / `plainN` (CIFAR family, 32x32x3),
`resnet50` / `plain50` (ImageNet family at 64x64x3). A PyTorch column is added where
torch is installed.
"""

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from resnet_jax import cli

_MODELS = flags.DEFINE_list(
    'models', 'resnet20,plain20,resnet56,plain56,resnet110,plain110,resnet1202,plain1202,'
    'resnet50', 'Models to time: resnetN / plainN (CIFAR, N = 6n+2), resnet50 / plain50 '
    '(ImageNet family at 64x64).')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128'], 'Global batch sizes.')
_REMAT = flags.DEFINE_list('remat_models', ['resnet1202'],
                           'Models also measured with model.remat=True (memory).')
_UNROLLED = flags.DEFINE_list('unrolled_models', ['resnet20'],
                              'Models also measured with model.scan_blocks=False.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per row (the median is reported).',
                              lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.', lower_bound=0)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'float16'],
                           'model.dtype: the compute dtype (parameters stay float32).')
_CONV = flags.DEFINE_enum('conv_impl', 'fast', ['fast', 'xla'], 'model.conv_impl.')
_CPU_CONV = flags.DEFINE_enum('cpu_convolutions', 'eigen', ['eigen', 'default'],
                              "config.cpu_convolutions: XLA:CPU's Eigen kernels or jaxlib's choice.")
_TORCH = flags.DEFINE_integer('torch_max_depth', 110, 'Add the PyTorch column (where torch '
                              'is installed) for CIFAR models up to this depth; 0: never.')
_VMAPPED = flags.DEFINE_enum(
    'time_vmapped_seeds', 'auto', ['auto', 'on', 'off'], 'Also time each CIFAR model with '
    'the paper preset\'s seeds in one vmapped program, as the depth ablation trains them '
    'there: auto = where the default JAX backend is not the CPU (as its --vmap_seeds).')
_PIPELINE = flags.DEFINE_bool('pipeline', True, 'Measure the input pipeline on its own.')
_PEAK = flags.DEFINE_float('peak_gflops', 0.0, 'The machine\'s peak GFLOP/s (0: estimated '
                           'for CPUs from cores x clock x FMA width).', lower_bound=0)
_OUTPUT = flags.DEFINE_string('output', 'runs/benchmark/benchmark.json', 'The JSON file.')
_ROW = flags.DEFINE_string('row', None, 'Internal: measure one row (JSON) and print it.')
_TORCH_ROW = flags.DEFINE_string('torch_row', None, 'Internal: time one PyTorch row.')

COMPILE_RATIO_TARGET, PIPELINE_RATIO_TARGET, MEMORY_TARGET_GIB = 3.0, 5.0, 24.0


def parse_model(name: str) -> tuple[dict, tuple, int]:
  """'resnet56' -> (model kwargs, image shape, classes)."""
  match = re.fullmatch(r'(resnet|plain)(\d+)', name)
  if not match:
    raise ValueError(f'Unknown benchmark model {name!r}: use resnetN or plainN.')
  from resnet_jax.models import resnet  # The families' own depth rules.
  residual, depth = match.group(1) == 'resnet', int(match.group(2))
  if depth not in resnet.IMAGENET_DEPTHS:
    try:
      resnet.cifar_stage_sizes(depth)
    except ValueError:
      raise ValueError(f'Unknown benchmark model {name!r}: the depth of a CIFAR ResNet is '
                       '6n+2 (20, 32, 44, 56, 110, 1202, ...), of an ImageNet one '
                       f'{", ".join(map(str, sorted(resnet.IMAGENET_DEPTHS)))}.') from None
  if depth in resnet.IMAGENET_DEPTHS:
    return (dict(name='imagenet_resnet', depth=depth, num_filters=64,
                 shortcut='B' if residual else 'none'), (64, 64, 3), 1000)
  return (dict(name='cifar_resnet', depth=depth, num_filters=16,
               shortcut='A' if residual else 'none'), (32, 32, 3), 10)


def _train_step_flops(model_kwargs, image_shape, num_classes, batch_size) -> float:
  """FLOPs of one train step from XLA's cost analysis of the unrolled XLA-conv twin.

  XLA counts a loop body once, so the scanned model cannot be analysed directly.
  For the CIFAR family each extra block per stage adds the same cost, so depths 8 and
  14 give every depth exactly, without tracing 1202 layers.
  """
  import jax
  import jax.numpy as jnp
  import optax
  from resnet_jax import models

  def cost(kwargs):
    kwargs = dict(kwargs, scan_blocks=False, conv_impl='xla', remat=False)
    model = models.create_model(num_classes=num_classes, **kwargs)
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1,) + tuple(image_shape)),
                                                  train=False))

    def loss(params, batch_stats, x, y):
      logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                              train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    lowered = jax.jit(jax.grad(loss)).lower(variables['params'], variables['batch_stats'],
                                            x, y)
    return float(lowered.cost_analysis()['flops'])

  if model_kwargs['name'] != 'cifar_resnet':
    return cost(model_kwargs)
  n = (model_kwargs['depth'] - 2) // 6
  c1, c2 = cost(dict(model_kwargs, depth=8)), cost(dict(model_kwargs, depth=14))
  return c1 + (n - 1) * (c2 - c1)


def time_train_step(config, image_shape, num_classes: int, seeds: int, steps: int,
                    warmup: int) -> dict:
  """Compiles `config`'s train step (`seeds` seeds vmapped where > 1) and times it on
  random batches of `image_shape`, no data read: init_s, compile_s, step_s (the median
  of `steps` after `warmup`), xla_bytes, and the last state and metrics."""
  import jax
  import numpy as np
  from resnet_jax import optim
  from resnet_jax import train

  model = train.build_model(config, num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, 1000)
  trainer = train.Trainer(config, model, tx, schedule, image_shape,
                          np.zeros(image_shape[-1], np.float32),
                          np.ones(image_shape[-1], np.float32), num_classes,
                          num_seeds=seeds)
  t = time.perf_counter()
  state = jax.block_until_ready(trainer.stack(
      [trainer.init_state(jax.random.PRNGKey(i)) for i in range(seeds)]))
  init_s = time.perf_counter() - t
  rng = np.random.default_rng(0)
  lead = (seeds,) if seeds > 1 else ()  # Several seeds' batches: a leading seed axis.
  batch = trainer.to_device({
      'image': rng.integers(0, 256, lead + (config.batch_size,) + tuple(image_shape),
                            dtype=np.uint8),
      'label': rng.integers(0, num_classes, lead + (config.batch_size,), dtype=np.int32)},
      train=True)
  key = trainer.stack([jax.random.PRNGKey(1 + i) for i in range(seeds)])
  t = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return dict(init_s=init_s, compile_s=compile_s, step_s=statistics.median(times),
              xla_bytes=xla_bytes, state=state, metrics=metrics)


def measure_row(row: dict) -> dict:
  """Compiles and times one train step configuration in this process (with `seeds` > 1:
  that many seeds' steps vmapped into one program, as a sweep's --vmap_seeds runs them)."""
  import jax
  import numpy as np
  from resnet_jax import config_lib
  from resnet_jax import models

  model_kwargs, image_shape, num_classes = parse_model(row['model'])
  config = config_lib.base_config()
  config.model.update(model_kwargs)
  config.model.remat = row['remat']
  config.model.scan_blocks = row['scan']
  config.model.dtype = row['dtype']
  config.model.conv_impl = row['conv_impl']
  config.cpu_convolutions = row['cpu_convolutions']
  config.batch_size = row['batch_size']
  config.data.augment = 'crop_flip'
  seeds = row.get('seeds', 1)
  timed = time_train_step(config, image_shape, num_classes, seeds, row['steps'],
                          row['warmup'])
  state, xla_bytes, step_s = timed['state'], timed['xla_bytes'], timed['step_s']
  losses = np.asarray(timed['metrics']['loss'])
  flops = seeds * _train_step_flops(model_kwargs, image_shape, num_classes,
                                    row['batch_size'])
  device = jax.devices()[0]
  return dict(row, params=models.count_params(state.params) // seeds,
              init_s=timed['init_s'], compile_s=timed['compile_s'], step_ms=step_s * 1e3,
              seeds=seeds,
              images_per_second=seeds * row['batch_size'] / step_s,
              gflop_per_step=flops / 1e9,
              gflops=flops / step_s / 1e9, xla_memory_gib=(xla_bytes or 0) / 2**30,
              peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              loss=float(losses.mean()), finite=bool(np.isfinite(losses).all()),
              platform=device.platform,
              device_kind=device.device_kind, devices=jax.device_count())


def pipeline_images_per_second(batch_size: int, steps: int = 200) -> dict:
  """The in-memory pipeline alone: host batch, transfer, jitted seeded crop + flip."""
  import jax
  import numpy as np
  from resnet_jax import datasets
  from resnet_jax import input_pipeline
  from resnet_jax import train

  rng = np.random.default_rng(0)
  split = datasets.ArraySplit(rng.integers(0, 256, (45000, 32, 32, 3), dtype=np.uint8),
                              rng.integers(0, 10, (45000,), dtype=np.int32))
  batches = input_pipeline.TrainBatches(split, batch_size, seed=0)
  mesh_sharding = jax.sharding.NamedSharding(train.make_mesh(), jax.sharding.PartitionSpec('data'))
  mean, std = input_pipeline.channel_stats(split.images[:1000])
  prep = jax.jit(lambda images, step: input_pipeline.preprocess(
      images, jax.random.fold_in(jax.random.PRNGKey(0), step), mean=mean, std=std,
      kind='crop_flip'))

  def one(step):
    batch = batches(step)
    images = jax.device_put(batch['image'], mesh_sharding)
    return prep(images, step)

  jax.block_until_ready(one(0))
  t = time.perf_counter()
  for step in range(1, steps + 1):
    out = one(step)
  jax.block_until_ready(out)
  seconds = time.perf_counter() - t
  return {'pipeline_images_per_second': steps * batch_size / seconds,
          'pipeline_batch_size': batch_size}


def machine_peak_gflops() -> float | None:
  """cores x clock x FP32 FLOPs per cycle (FMA: 2 units x vector width x 2), for CPUs."""
  if _PEAK.value > 0:
    return _PEAK.value
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return None
  mhz = [float(m) for m in re.findall(r'cpu MHz\s*:\s*([\d.]+)', info)]
  if not mhz:
    return None
  flags_line = re.search(r'flags\s*:(.*)', info).group(1).split()
  width = 16 if 'avx512f' in flags_line else 8 if 'avx2' in flags_line else 4
  per_cycle = width * 2 * (2 if 'fma' in flags_line else 1)
  return os.cpu_count() * statistics.mean(mhz) / 1e3 * per_cycle


def vmapped_seeds(choice: str) -> int:
  """Seeds per program for the vmapped rows: the paper preset's seed count where
  --time_vmapped_seeds resolves on (as the sweep resolves --vmap_seeds), else 1 (none)."""
  from experiments import depth_ablation
  devices = depth_ablation.probe_devices() if choice == 'auto' else None
  if not depth_ablation.seeds_together(choice, devices):
    return 1
  return len(depth_ablation.load_config_file('ablation.py').get_config('paper').seeds)


def run_row_isolated(row: dict, flag: str = 'row') -> dict:
  """Measures `row` in a fresh process: its peak memory is its own, a row that runs out
  of memory cannot take the whole benchmark down, and its compile time is XLA's, not a
  read of a persistent compilation cache the caller may have set."""
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  out = subprocess.run([sys.executable, '-m', 'experiments.benchmark',
                        f'--{flag}={json.dumps(row)}'], capture_output=True, text=True,
                       env=env)
  if out.returncode == -9:
    return dict(row, error='killed (SIGKILL): out of memory?')
  if out.returncode != 0:
    tail = (out.stderr.strip().splitlines() or ['(no output)'])[-1]
    return dict(row, error=tail)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def _blocks(row) -> str:
  seeds = row.get('seeds', 1)
  return (('scan' if row['scan'] else 'unrolled') + (' + remat' if row['remat'] else '')
          + (f' x {seeds} seeds (vmap)' if seeds > 1 else ''))


def table(rows: list[dict], peak: float | None) -> str:
  head = ('| model | batch | blocks | params | compile s | step ms | img/s | GFLOP/step | '
          'GFLOP/s | % of peak | XLA mem GiB | peak RSS GiB | torch img/s |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in rows:
    if 'error' in r:
      lines.append(f'| {r["model"]} | {r["batch_size"]} | {_blocks(r)} | error: '
                   f'{r["error"]} |')
      continue
    share = r['gflops'] / peak * 100 if peak else None
    lines.append(
        f'| {r["model"]} | {r["batch_size"]} | {_blocks(r)} | '
        f'{r["params"]:,} | {r["compile_s"]:.1f} | {r["step_ms"]:.0f} | '
        f'{r["images_per_second"]:.0f} | {r["gflop_per_step"]:.1f} | {r["gflops"]:.1f} | '
        f'{_fmt(share, ".1f")} | {r["xla_memory_gib"]:.2f} | {r["peak_rss_gib"]:.2f} | '
        f'{_fmt(r.get("torch_images_per_second"), ".0f")} |')
  return '\n'.join(lines)


def targets(rows: list[dict], pipeline: dict | None) -> list[str]:
  """The performance issue's targets, as ratios within this run."""
  ok = {(r['model'], r['batch_size'], r['remat'], r['scan']): r
        for r in rows if 'error' not in r and r.get('seeds', 1) == 1}
  out = []
  for b in sorted({r['batch_size'] for r in rows}):
    small, big = ok.get(('resnet20', b, False, True)), ok.get(('resnet1202', b, False, True))
    fastest = max((r for r in (small, ok.get(('resnet20', b, False, False))) if r),
                  key=lambda r: r['images_per_second'], default=None)
    if small and big:
      ratio = big['compile_s'] / small['compile_s']
      out.append(f'compile ResNet-1202 / ResNet-20 (batch {b}): {ratio:.2f}x '
                 f'(target <= {COMPILE_RATIO_TARGET:g}x: '
                 f'{"met" if ratio <= COMPILE_RATIO_TARGET else "NOT met"})')
    if fastest and small.get('torch_images_per_second'):
      ratio = fastest['images_per_second'] / small['torch_images_per_second']
      out.append(f'ResNet-20 batch {b} images/s, JAX ({_blocks(fastest)}) / PyTorch: '
                 f'{ratio:.2f} ({fastest["images_per_second"]:.0f} vs '
                 f'{small["torch_images_per_second"]:.0f}; target >= 1: '
                 f'{"met" if ratio >= 1 else "NOT met"})')
    if fastest and pipeline:
      ratio = pipeline['pipeline_images_per_second'] / fastest['images_per_second']
      out.append(f'pipeline / ResNet-20 train step images/s: {ratio:.1f}x (target >= '
                 f'{PIPELINE_RATIO_TARGET:g}x: '
                 f'{"met" if ratio >= PIPELINE_RATIO_TARGET else "NOT met"})')
    for remat in (False, True):
      r = ok.get(('resnet1202', b, remat, True))
      if r:
        mem = max(r['peak_rss_gib'], r['xla_memory_gib'])
        verdict = (f'target <= {MEMORY_TARGET_GIB:g} GiB: '
                   f'{"met" if mem <= MEMORY_TARGET_GIB and r["finite"] else "NOT met"}'
                   if remat else 'for comparison')
        out.append(f'ResNet-1202 batch {b} {"with" if remat else "without"} remat: peak '
                   f'{mem:.1f} GiB, loss {"finite" if r["finite"] else "NOT finite"} '
                   f'({verdict})')
  return out


def _step_seconds(rows: list[dict], seeds: int):
  """Step seconds as a function of depth, from the timed batch-128 CIFAR rows of `seeds`
  seeds per program: a least-squares line (step time is linear in depth, plain and
  residual alike), or None with fewer than two depths."""
  import numpy as np
  timed = [(kwargs['depth'], r['step_ms'] / 1000)
           for r, kwargs in ((r, parse_model(r['model'])[0]) for r in rows)
           if 'error' not in r and r['batch_size'] == 128 and r['scan'] and not r['remat']
           and r.get('seeds', 1) == seeds and kwargs['name'] == 'cifar_resnet']
  if len({d for d, _ in timed}) < 2:
    return None
  slope, intercept = np.polyfit([d for d, _ in timed], [t for _, t in timed], 1)
  return lambda depth: intercept + slope * depth


def preset_hours(rows: list[dict], presets=('paper', 'extreme')) -> dict:
  """Hours the ablation presets on CIFAR shapes would train at this run's step times,
  steps only, run as the sweep runs them: one depth and net at a time, its seeds in one
  program where rows timed that many seeds vmapped, else one cell after another."""
  from experiments import depth_ablation
  fits = {1: _step_seconds(rows, 1)}  # Seconds a step against depth, by seeds per program.
  single = fits[1]
  if single is None:
    return {}
  out = {}
  for preset in presets:
    ablation = depth_ablation.load_config_file('ablation.py').get_config(preset)
    cells = depth_ablation.grid(ablation)
    configs = {cell: depth_ablation.cell_config(ablation, cell) for cell in cells}
    if not all(c.batch_size == 128 and c.data.name.startswith('cifar')
               for c in configs.values()):
      continue  # A preset changed to other shapes: these rows do not time it.
    seconds = 0.0
    for unit in depth_ablation.units(cells, together=True):  # Seeds of a depth and net.
      if len(unit) not in fits:
        fits[len(unit)] = _step_seconds(rows, len(unit))
      fit = fits[len(unit)]
      seconds += (configs[unit[0]].num_train_steps * fit(unit[0].depth) if fit else
                  sum(configs[c].num_train_steps * single(c.depth) for c in unit))
    out[preset] = seconds / 3600
  return out


def main(argv):
  cli.refuse_arguments(argv)
  logging.set_verbosity(logging.WARNING)
  if _ROW.value:
    print(json.dumps(measure_row(json.loads(_ROW.value))))
    return
  if _TORCH_ROW.value:
    from experiments import torch_reference
    row = json.loads(_TORCH_ROW.value)
    print(json.dumps(torch_reference.train_step_ms(
        parse_model(row['model'])[0]['depth'], row['model'].startswith('resnet'),
        row['batch_size'], steps=row['steps'], warmup=row['warmup'])))
    return
  try:  # Bad names, batch sizes and output paths fail in one line, before anything runs.
    if not _MODELS.value:
      raise ValueError('--models is empty: name the models to time, as in '
                       '--models=resnet20,plain20.')
    check_output(_OUTPUT.value)
    for name in _MODELS.value + _REMAT.value + _UNROLLED.value:
      parse_model(name)
    for b in _BATCH_SIZES.value:
      if not b.isdigit() or int(b) < 1:
        raise ValueError(f'--batch_sizes takes positive integers, not {b!r}.')
  except ValueError as e:
    sys.exit(f'error: {e}')
  try:
    import torch  # pylint: disable=unused-import
    have_torch = _TORCH.value > 0
  except ImportError:
    have_torch = False
  seeds = vmapped_seeds(_VMAPPED.value)

  def variants(m):  # (remat, scan, seeds) of each row of model `m`.
    return ([(False, True, 1)] + [(True, True, 1)] * (m in _REMAT.value)
            + [(False, False, 1)] * (m in _UNROLLED.value)
            + [(False, True, seeds)] * (seeds > 1
                                        and parse_model(m)[0]['name'] == 'cifar_resnet'))

  plan = [dict(model=m, batch_size=int(b), remat=remat, scan=scan, steps=_STEPS.value,
               warmup=_WARMUP.value, dtype=_DTYPE.value, conv_impl=_CONV.value,
               cpu_convolutions=_CPU_CONV.value, seeds=k)
          for b in _BATCH_SIZES.value for m in _MODELS.value for remat, scan, k in variants(m)]
  rows = []
  for i, row in enumerate(plan, 1):
    vmapped = f' x {row["seeds"]} seeds' if row['seeds'] > 1 else ''
    print(f'[{i}/{len(plan)}] {row["model"]} batch {row["batch_size"]}'
          f'{" remat" if row["remat"] else ""}{"" if row["scan"] else " unrolled"}'
          f'{vmapped} ...', end=' ', flush=True)
    result = run_row_isolated(row)
    kwargs = parse_model(row['model'])[0]
    if have_torch and not row['remat'] and row['scan'] and row['seeds'] == 1 \
        and 'error' not in result \
        and kwargs['name'] == 'cifar_resnet' and kwargs['depth'] <= _TORCH.value:
      torch_result = run_row_isolated(row, 'torch_row')
      result.update({k: v for k, v in torch_result.items() if k.startswith('torch')})
    rows.append(result)
    print(result.get('error') or f'compile {result["compile_s"]:.1f} s, step '
          f'{result["step_ms"]:.0f} ms, {result["images_per_second"]:.0f} img/s, '
          f'peak {result["peak_rss_gib"]:.1f} GiB', flush=True)
    save(rows, None, None)
  pipeline = None
  if _PIPELINE.value:
    print('input pipeline ...', end=' ', flush=True)
    pipeline = pipeline_images_per_second(int(_BATCH_SIZES.value[0]))
    print(f'{pipeline["pipeline_images_per_second"]:.0f} img/s', flush=True)
  peak = machine_peak_gflops()
  print()
  print(table(rows, peak))
  print(f'\nPeak FP32 GFLOP/s assumed: {_fmt(peak, ".0f")} ({platform.processor() or "cpu"}, '
        f'{os.cpu_count()} cores).')
  for line in targets(rows, pipeline):
    print(line)
  hours = preset_hours(rows)
  from experiments import depth_ablation
  for preset, h in hours.items():
    k = len(depth_ablation.load_config_file('ablation.py').get_config(preset).seeds)
    how = (f'one depth and net at a time, its {k} seeds in one program (vmap)'
           if seeds > 1 and k == seeds else 'one cell at a time')
    print(f'At these step times the {preset} preset of the depth ablation trains in about '
          f'{h:,.1f} h here ({h / 24:,.1f} days), {how}, steps only.')
  save(rows, pipeline, peak, hours)
  print(f'Wrote {_OUTPUT.value}.')


def check_output(path: str) -> None:
  """Refuses an --output the JSON cannot be written to, before minutes of measuring."""
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    raise ValueError(f'--output {path} is a directory: name the JSON file to write.')
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--output {path} cannot be written: its directory cannot be made '
                     f'({e.strerror}); choose another --output.') from e
  if not os.access(parent, os.W_OK):
    raise ValueError(f'--output {path} cannot be written: {parent} is not writable; choose '
                     'another --output.')


def save(rows, pipeline, peak, hours=None):
  """Writes the JSON (after every row, so a long benchmark keeps what it measured)."""
  from resnet_jax import run_dir
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  run_dir.write_text(_OUTPUT.value, json.dumps(
      {'rows': rows, 'pipeline': pipeline, 'peak_gflops': peak,
       'targets': targets(rows, pipeline), 'preset_hours': hours}, indent=2))


if __name__ == '__main__':
  app.run(main)
