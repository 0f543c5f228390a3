"""Why skips work: the loss landscapes, lesion study and sharpness of trained cells (a
sweep's, or single runs'), each kept in CELL/why/*.json (why_results) and computed only
where missing or made with other settings or from another checkpoint."""

import dataclasses
import fnmatch
import json
import os
import time

from resnet_jax import nets
from resnet_jax import run_dir
from resnet_jax.analysis import why_results

ANALYSES = ('landscape', 'lesion', 'sharpness')


@dataclasses.dataclass(frozen=True)
class Options:
  """What to compute and how finely (0 examples: the whole split). Sized for 2 CPU cores;
  `paper()` gives Li et al.'s resolution."""
  analyses: tuple = ANALYSES
  landscape_resolution: int = 9  # Points a side of the 2-D grid over [-1, 1]^2.
  landscape_line_points: int = 21  # Points of the 1-D slice and of the init->trained line.
  landscape_examples: int = 256  # The first training images.
  landscape_seeds: str = 'first'  # 'first': the first seed of each depth and net; 'all'.
  # Random directions of the profiles (every seed's; landscape.PROFILE_DISTANCES).
  landscape_directions: int = 8
  points_per_call: int = 0  # Points vmapped into one call; 0: 1 on CPU, 8 elsewhere.
  lesion_examples: int = 500  # The first test images.
  lesion_draws: int = 3  # Random draws of each number of deleted blocks.
  lesion_max_deleted: int = 8
  sharpness_examples: int = 128  # The first training images (half the landscape's).
  sharpness_iterations: int = 20
  seed: int = 0  # Of the random directions, deletions and the power iteration's start.
  # Cells that stalled near chance (results.stalled) are listed, not analysed: their
  # lesions and sharpness measure a constant prediction. True analyses them too.
  stalled: bool = False

  def check(self):
    unknown = set(self.analyses) - set(ANALYSES)
    if unknown or not self.analyses:
      raise ValueError(f'Unknown analyses {sorted(unknown)}: use some of '
                       f'{", ".join(ANALYSES)}.')
    if self.landscape_seeds not in ('first', 'all'):
      raise ValueError(f'Unknown landscape_seeds {self.landscape_seeds!r}: use first or all.')
    from resnet_jax.analysis import landscape  # Its own rules on the points.
    landscape.coordinates('2d', self.landscape_resolution)
    for kind in ('1d', 'line'):
      landscape.coordinates(kind, self.landscape_line_points)
    if self.landscape_directions < 1:
      raise ValueError('landscape_directions must be at least 1, got '
                       f'{self.landscape_directions}.')
    for key in ('landscape_examples', 'lesion_examples', 'sharpness_examples',
                'points_per_call', 'lesion_draws', 'lesion_max_deleted'):
      if getattr(self, key) < 0:
        raise ValueError(f'{key} must be >= 0, got {getattr(self, key)}.')
    if self.sharpness_iterations < 1:
      raise ValueError('sharpness_iterations must be at least 1, got '
                       f'{self.sharpness_iterations}.')

  def paper(self) -> 'Options':
    """Li et al.'s resolution: a 51x51 grid and 51-point curves on the whole training set."""
    return dataclasses.replace(self, landscape_resolution=51, landscape_line_points=51,
                               landscape_examples=0)


def settings(options: Options, step: int | None) -> dict:
  """{analysis file: the settings it is computed with} (examples as asked, 0: all);
  `step`: the checkpoint analysed."""
  from resnet_jax.analysis import landscape
  land = {'examples': options.landscape_examples, 'seed': options.seed, 'step': step}
  return {
      'profiles': dict(land, directions=options.landscape_directions,
                       distances=list(landscape.PROFILE_DISTANCES)),
      'landscape_2d': dict(land, resolution=options.landscape_resolution),
      'landscape_1d': dict(land, resolution=options.landscape_line_points),
      'landscape_line': dict(land, resolution=options.landscape_line_points),
      'lesion': {'examples': options.lesion_examples, 'draws': options.lesion_draws,
                 'max_deleted': options.lesion_max_deleted, 'seed': options.seed,
                 'step': step},
      'sharpness': {'examples': options.sharpness_examples,
                    'iterations': options.sharpness_iterations, 'seed': options.seed,
                    'step': step},
  }


def pending(celldir: str, options: Options, landscapes: bool) -> dict:
  """{analysis file: settings} of what `options` asks of the cell that it lacks (the
  pictured landscapes only if `landscapes`; the profiles, part of 'landscape', for every
  seed). A cell whose checkpoints were deleted (to free disk) keeps what it has."""
  step = run_dir.newest_step(celldir)
  group = lambda k: 'landscape' if k == 'profiles' else k.split('_')[0]
  wanted = {k: v for k, v in settings(options, step).items()
            if group(k) in options.analyses and (landscapes or k[:10] != 'landscape_')}
  out = {}
  for name, want in wanted.items():
    saved = why_results.load(why_results.path(celldir, name))
    have = (saved or {}).get('settings')
    if have and step is None:
      have = dict(have, step=None)
    if have != want or None in (saved or {}).get('loss', ()):
      out[name] = want
  return out


def analyse_cell(celldir: str, options: Options, landscapes: bool, label: str = '') -> None:
  """Computes what `options.analyses` asks of one trained cell and it lacks (landscapes
  only if `landscapes`), into CELL/why/."""
  todo = pending(celldir, options, landscapes)
  if not todo:
    return
  import jax
  from resnet_jax.analysis import landscape, layers, lesion, probe, sharpness
  cell = layers.restore_cell(celldir)
  model, state, jit_options = cell.model, cell.final_state, cell.trainer.compiler_options
  params, batch_stats = state.params, state.batch_stats
  os.makedirs(os.path.join(celldir, why_results.WHY), exist_ok=True)
  probes = {}

  def images(split, n):
    if (split, n) not in probes:
      probes[split, n] = probe.Probe(cell.data, split, n or cell.data.sizes[split])
    return probes[split, n]

  def save(name, saved, seconds):
    saved = dict(saved, settings=todo[name], seconds=seconds)
    run_dir.write_text(why_results.path(celldir, name), json.dumps(saved))
    return saved

  kinds = [k for k in landscape.KINDS if f'landscape_{k}' in todo]
  if kinds or 'profiles' in todo:
    train = images('train', options.landscape_examples)
    per_call = options.points_per_call or (1 if jax.default_backend() == 'cpu' else 8)
    evaluate = landscape.evaluator(model, per_call, jit_options)
    if 'profiles' in todo:
      landscape.compute_profiles(why_results.path(celldir, 'profiles'), todo['profiles'],
                                 evaluate, params, batch_stats, train.chunks(), per_call,
                                 label=label)
    for kind in kinds:
      d1, d2 = landscape.directions(kind, jax.random.PRNGKey(options.seed), params,
                                    cell.init_state.params)
      landscape.compute(why_results.path(celldir, f'landscape_{kind}'), kind,
                        todo[f'landscape_{kind}'], evaluate, params, d1, d2, batch_stats,
                        train.chunks(), per_call, label=label)
  if 'lesion' in todo:
    t = time.perf_counter()
    test = images('test', options.lesion_examples)
    saved = save('lesion', lesion.lesion(
        model, params, batch_stats, test.chunks(), options.lesion_draws,
        options.lesion_max_deleted, options.seed, jit_options), time.perf_counter() - t)
    single = [s['error'] for s in saved['single']] or [saved['error']]
    print(f'{label}lesion ({test.n} test images): error {100 * saved["error"]:.2f}% whole, '
          f'one block deleted {100 * sum(single) / len(single):.2f}% on average, '
          f'{100 * max(single):.2f}% at worst ({saved["seconds"]:.0f} s)', flush=True)
  if 'sharpness' in todo:
    t = time.perf_counter()
    train = images('train', options.sharpness_examples)
    saved = save('sharpness', sharpness.top_eigenvalue(
        model, params, batch_stats, train.chunks(), options.sharpness_iterations,
        options.seed, compiler_options=jit_options), time.perf_counter() - t)
    print(f'{label}sharpness ({train.n} training images): top Hessian eigenvalue '
          f'{saved["eigenvalue"]:.4g} after {saved["iterations"]} iterations '
          f'({saved["seconds"]:.0f} s)', flush=True)


def select(cells: list[dict], patterns: list[str]) -> list[dict]:
  """The cells whose names match one of the shell patterns (all where none is given)."""
  if not patterns:
    return cells
  chosen = [c for c in cells if any(fnmatch.fnmatch(c['name'], p) for p in patterns)]
  if not chosen:
    raise ValueError(f'No finished cell matches --cells={",".join(patterns)}: the cells are '
                     f'{", ".join(c["name"] for c in cells)}.')
  return chosen


def run_sweep(workdir: str, options: Options, patterns: list[str] = ()) -> list[dict]:
  """The analyses of a sweep's finished cells (landscapes of each depth and net's first
  seed unless options.landscape_seeds is 'all'; stalled cells only if options.stalled);
  returns the cells analysed."""
  from resnet_jax.analysis import layers, results
  from resnet_jax.durations import format_duration
  options.check()
  cells = [c for c in results.read_cells(workdir) if results.finished(c)]
  if not cells:
    raise results.ReportError(f'No finished ablation cells in {workdir}: run the sweep '
                              'first (or pass single runs\' directories with --runs).')
  cells = select(cells, list(patterns))
  classes = results.num_classes(results.cells_data(workdir, cells))
  stalled = [c for c in cells if results.stalled(c, classes)]
  if stalled and not options.stalled:
    print(f'Not analysed: {len(stalled)} cells that stalled within {results.STALL_POINTS:g} '
          f'points of chance ({results.chance_error(classes):.0f}% training error): '
          f'{", ".join(c["name"] for c in stalled)} (--stalled analyses them too).', flush=True)
    cells = [c for c in cells if c not in stalled]
  first_seed = {}
  for c in sorted(cells, key=lambda c: c['seed']):
    first_seed.setdefault((c['depth'], nets.of(c)), c['name'])
  start = time.perf_counter()
  for i, c in enumerate(cells):
    label = f'[{i + 1}/{len(cells)}] {c["name"]}: '
    landscapes = options.landscape_seeds == 'all' or first_seed[
        (c['depth'], nets.of(c))] == c['name']
    try:
      analyse_cell(os.path.join(workdir, c['name']), options, landscapes, label)
    except layers.UNAVAILABLE as e:
      print(f'{label}not analysed: {e}', flush=True)
  print(f'Analysed {len(cells)} cells in {format_duration(time.perf_counter() - start)}.',
        flush=True)
  return cells


def run_dirs(dirs: list[str], options: Options) -> None:
  """The analyses of single runs' directories (their landscapes included)."""
  options.check()
  for i, d in enumerate(dirs):
    analyse_cell(d, options, True, f'[{i + 1}/{len(dirs)}] {os.path.basename(d.rstrip("/"))}: ')

