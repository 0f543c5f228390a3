"""The benchmark of the train step (experiments/benchmark.py): each row compiled and timed
in a process of its own, the issue targets as ratios within one run, and the hours the
ablation presets would train at the measured step times."""

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from resnet_jax import huge_pages
from resnet_jax import peer_process
from resnet_jax import run_dir
from resnet_jax.timing import time_train_step

COMPILE_RATIO_TARGET, PIPELINE_RATIO_TARGET, MEMORY_TARGET_GIB = 3.0, 5.0, 24.0
MODULE = 'experiments.benchmark'  # The command line that measures a row alone.
TORCH_WARMUP = 5  # Untimed PyTorch steps at least (its allocator and oneDNN primitives).


QUICK = 'quick-'  # quick-resnetN, quick-plainN: the quick ablation preset's nets.


def quick_config(name: str):
  """The run config of the quick preset's cell that `name` (quick-plain56) times."""
  from resnet_jax.sweep import ablation as ablation_lib
  from resnet_jax.sweep.cells import Cell
  kwargs = parse_model(name)[0]
  preset = ablation_lib.load_config_file('ablation.py').get_config('quick')
  return ablation_lib.cell_config(preset, Cell(kwargs['depth'], kwargs['shortcut'], 0))


def parse_model(name: str) -> tuple[dict, tuple, int]:
  """'resnet56' -> (model kwargs, image shape, classes); 'quick-plain56': the quick
  ablation preset's plain-56, as its config builds it, on its data set's images."""
  match = re.fullmatch(f'({QUICK})?(resnet|plain)(\\d+)', name)
  if not match:
    raise ValueError(f'Unknown benchmark model {name!r}: use resnetN or plainN (quick-resnetN '
                     'or quick-plainN for the quick preset\'s nets).')
  from resnet_jax.models import resnet  # The families' own depth rules.
  quick, residual, depth = bool(match.group(1)), match.group(2) == 'resnet', int(match.group(3))
  if quick:
    from resnet_jax import datasets
    resnet.cifar_stage_sizes(depth)
    config = quick_config(name[len(QUICK):])
    spec = datasets.get_spec(config.data.name)
    return (dict(name=config.model.name, depth=depth, num_filters=config.model.num_filters,
                 shortcut=config.model.shortcut), spec.image_shape, spec.num_classes)
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
  # As the nets train: the quick preset's cells as its config says, CIFAR's with crop and
  # flip.
  config.data.augment = (quick_config(row['model'][len(QUICK):]).data.augment
                         if row['model'].startswith(QUICK) else 'crop_flip')
  seeds = row.get('seeds', 1)
  timed = time_train_step(config, image_shape, num_classes, seeds, row['steps'],
                          row['warmup'])
  state, xla_bytes, step_s = timed['state'], timed['xla_bytes'], timed['step_s']
  losses = np.asarray(timed['metrics']['loss'])
  flops = seeds * _train_step_flops(model_kwargs, image_shape, num_classes,
                                    row['batch_size'])
  device = jax.devices()[0]
  from resnet_jax.trainer import conv_impl
  return dict(row, conv_impl_run=conv_impl(row['conv_impl']),
              params=models.count_params(state.params) // seeds,
              init_s=timed['init_s'], compile_s=timed['compile_s'], step_ms=step_s * 1e3,
              seeds=seeds,
              images_per_second=seeds * row['batch_size'] / step_s,
              gflop_per_step=flops / 1e9,
              gflops=flops / step_s / 1e9, xla_memory_gib=(xla_bytes or 0) / 2**30,
              peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              loss=float(losses.mean()), finite=bool(np.isfinite(losses).all()),
              platform=device.platform, huge_pages=huge_pages.requested(os.environ),
              device_kind=device.device_kind, devices=jax.device_count())


def pipeline_images_per_second(batch_size: int, steps: int = 200) -> dict:
  """The in-memory pipeline alone: host batch, transfer, jitted seeded crop + flip."""
  import jax
  import numpy as np
  from resnet_jax import datasets
  from resnet_jax import input_pipeline
  from resnet_jax import trainer

  rng = np.random.default_rng(0)
  split = datasets.ArraySplit(rng.integers(0, 256, (45000, 32, 32, 3), dtype=np.uint8),
                              rng.integers(0, 10, (45000,), dtype=np.int32))
  batches = input_pipeline.TrainBatches(split, batch_size, seed=0)
  mesh_sharding = jax.sharding.NamedSharding(trainer.make_mesh(),
                                              jax.sharding.PartitionSpec('data'))
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


def machine_peak_gflops(given: float = 0.0) -> float | None:
  """cores x clock x FP32 FLOPs per cycle (FMA: 2 units x vector width x 2), for CPUs."""
  if given > 0:
    return given
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
  from resnet_jax.sweep import ablation
  from resnet_jax.sweep import devices
  found = devices.probe_devices() if choice == 'auto' else None
  if not devices.seeds_together(choice, found):
    return 1
  return len(ablation.load_config_file('ablation.py').get_config('paper').seeds)


def run_row_isolated(row: dict) -> dict:
  """Measures `row` in a fresh process: its peak memory is its own, a row that runs out
  of memory cannot take the whole benchmark down, and its compile time is XLA's, not a
  read of a persistent compilation cache the caller may have set; with glibc's huge pages
  for XLA's buffers, as the sweep's workers train (resnet_jax/huge_pages.py)."""
  env = huge_pages.with_huge_pages(
      {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'})
  out = subprocess.run([sys.executable, '-m', MODULE,
                        f'--row={json.dumps(row)}'], capture_output=True, text=True,
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
    for model in dict.fromkeys(r['model'] for r in rows):  # Each net PyTorch timed too.
      timed = ok.get((model, b, False, True))
      if not timed or not timed.get('torch_images_per_second'):
        continue
      jax_row = max((r for r in (timed, ok.get((model, b, False, False))) if r),
                    key=lambda r: r['images_per_second'])
      ratio = jax_row['images_per_second'] / timed['torch_images_per_second']
      out.append(f'{model} batch {b} images/s, JAX ({_blocks(jax_row)}) / PyTorch: '
                 f'{ratio:.2f} ({jax_row["images_per_second"]:.0f} vs '
                 f'{timed["torch_images_per_second"]:.0f}; target >= 1: '
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
           for r, (kwargs, shape, _) in ((r, parse_model(r['model'])) for r in rows)
           if 'error' not in r and r['batch_size'] == 128 and r['scan'] and not r['remat']
           and r.get('seeds', 1) == seeds and kwargs['name'] == 'cifar_resnet'
           and shape == (32, 32, 3) and kwargs['num_filters'] == 16]
  if len({d for d, _ in timed}) < 2:
    return None
  slope, intercept = np.polyfit([d for d, _ in timed], [t for _, t in timed], 1)
  return lambda depth: intercept + slope * depth


def preset_hours(rows: list[dict], presets=('paper', 'extreme')) -> dict:
  """Hours the ablation presets on CIFAR shapes would train at this run's step times,
  steps only, run as the sweep runs them: one depth and net at a time, its seeds in one
  program where rows timed that many seeds vmapped, else one cell after another."""
  from resnet_jax.sweep import ablation as ablation_lib
  from resnet_jax.sweep import cells as cells_lib
  fits = {1: _step_seconds(rows, 1)}  # Seconds a step against depth, by seeds per program.
  single = fits[1]
  if single is None:
    return {}
  out = {}
  for preset in presets:
    ablation = ablation_lib.load_config_file('ablation.py').get_config(preset)
    cells = cells_lib.grid(ablation)
    configs = {cell: ablation_lib.cell_config(ablation, cell) for cell in cells}
    if not all(c.batch_size == 128 and c.data.name.startswith('cifar')
               for c in configs.values()):
      continue  # A preset changed to other shapes: these rows do not time it.
    seconds = 0.0
    for unit in cells_lib.units(cells, together=True):  # Seeds of a depth and net.
      if len(unit) not in fits:
        fits[len(unit)] = _step_seconds(rows, len(unit))
      fit = fits[len(unit)]
      seconds += (configs[unit[0]].num_train_steps * fit(unit[0].depth) if fit else
                  sum(configs[c].num_train_steps * single(c.depth) for c in unit))
    out[preset] = seconds / 3600
  return out


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


def save(path: str, rows, pipeline, peak, hours=None, lesson=None):
  """Writes the JSON (after every row, so a long benchmark keeps what it measured);
  `lesson`: the lesson's model against Keras (lesson_benchmark.compare)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  run_dir.write_text(path, json.dumps(
      {'rows': rows, 'pipeline': pipeline, 'peak_gflops': peak,
       'targets': targets(rows, pipeline), 'preset_hours': hours, 'lesson': lesson},
      indent=2))


def plan(models: list[str], batch_sizes: list[str], remat_models: list[str],
         unrolled_models: list[str], seeds: int, **common) -> list[dict]:
  """The rows to measure: each model at each batch size, plus its remat, unrolled and
  vmapped-seeds variants where asked; `common` goes into every row."""
  def variants(m):  # (remat, scan, seeds) of each row of model `m`.
    return ([(False, True, 1)] + [(True, True, 1)] * (m in remat_models)
            + [(False, False, 1)] * (m in unrolled_models)
            + [(False, True, seeds)] * (seeds > 1
                                        and parse_model(m)[0]['name'] == 'cifar_resnet'))
  return [dict(model=m, batch_size=int(b), remat=remat, scan=scan, seeds=k, **common)
          for b in batch_sizes for m in models for remat, scan, k in variants(m)]


def torch_args(row: dict) -> list[str]:
  """peers/torch_resnet.py's flags for the same net, batch and timed steps as `row`."""
  kwargs, shape, classes = parse_model(row['model'])
  return [f'--depth={kwargs["depth"]}', *(['--plain'] * (kwargs['shortcut'] == 'none')),
          f'--batch_size={row["batch_size"]}', f'--image_size={shape[0]}',
          f'--width={kwargs["num_filters"]}', f'--in_channels={shape[-1]}',
          f'--num_classes={classes}', f'--steps={row["steps"]}',
          f'--warmup={max(row["warmup"], TORCH_WARMUP)}']


def has_torch_twin(row: dict, torch_max_depth: int) -> bool:
  """PyTorch times the CIFAR family's scanned single-seed rows up to `torch_max_depth`
  where torch is installed (the unrolled row of a net shares its scanned row's twin)."""
  import importlib.util
  kwargs = parse_model(row['model'])[0]
  return (torch_max_depth > 0 and not row['remat'] and row['scan'] and row['seeds'] == 1
          and kwargs['name'] == 'cifar_resnet' and kwargs['depth'] <= torch_max_depth
          and importlib.util.find_spec('torch') is not None)


def measure(row: dict, torch_max_depth: int, rounds: int = 1) -> dict:
  """`row` measured in a process of its own `rounds` times, alternating with PyTorch's
  twin (peers/torch_resnet.py, as its users run it) where it has one; the fastest round
  of each, with every round's step time."""
  twin = has_torch_twin(row, torch_max_depth)
  ours, theirs = [], []
  for _ in range(rounds):
    ours.append(run_row_isolated(row))
    if 'error' in ours[-1]:
      return ours[-1]
    if twin:
      try:
        theirs.append(peer_process.run('torch_resnet.py', torch_args(row))[0])
      except RuntimeError as e:
        theirs.append({'torch_error': str(e)})
  result = dict(min(ours, key=lambda r: r['step_ms']),
                step_ms_rounds=[r['step_ms'] for r in ours])
  timed = [t for t in theirs if 'torch_step_ms' in t]
  if timed:
    result.update(min(timed, key=lambda t: t['torch_step_ms']),
                  torch_step_ms_rounds=[t['torch_step_ms'] for t in timed])
  elif theirs:
    result['torch_error'] = theirs[-1]['torch_error']
  return result


def print_summary(rows: list[dict], pipeline, peak, seeds: int) -> dict:
  """Prints the table, the targets and the presets' hours; returns the hours."""
  print()
  print(table(rows, peak))
  print(f'\nPeak FP32 GFLOP/s assumed: {_fmt(peak, ".0f")} ({platform.processor() or "cpu"}, '
        f'{os.cpu_count()} cores).')
  impls = sorted({r.get('conv_impl_run', r['conv_impl']) for r in rows})
  print(f'Convolutions: conv_impl {", ".join(impls)}.')
  for line in targets(rows, pipeline):
    print(line)
  torch_env = next((r['torch_environment'] for r in rows if 'torch_environment' in r), None)
  if torch_env:
    print(f'PyTorch ran as: {peer_process.describe(torch_env)}')
  hours = preset_hours(rows)
  from resnet_jax.sweep import ablation
  for preset, h in hours.items():
    k = len(ablation.load_config_file('ablation.py').get_config(preset).seeds)
    how = (f'one depth and net at a time, its {k} seeds in one program (vmap)'
           if seeds > 1 and k == seeds else 'one cell at a time')
    print(f'At these step times the {preset} preset of the depth ablation trains in about '
          f'{h:,.1f} h here ({h / 24:,.1f} days), {how}, steps only.')
  return hours
