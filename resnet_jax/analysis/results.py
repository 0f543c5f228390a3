"""A sweep's results from its cells' run records: each cell's final numbers and curves,
the table of mean +- std over seeds, the errors at matched steps of a sweep under way."""

import csv
import json
import os

import numpy as np

from resnet_jax import metrics_io
from resnet_jax import run_dir
from resnet_jax.analysis import paper
from resnet_jax.analysis import why_results
from resnet_jax import nets
from resnet_jax.nets import Cell




class ReportError(ValueError):
  """The directory cannot be reported: no cells with metrics, or an unreadable ablation.json."""


def run_seconds(run: dict, train: list[dict]) -> float:
  """A run's compile and training seconds. A resumed run timed only its last session (from
  `first_step`): its earlier steps count at the speeds its training summaries logged."""
  seconds, last = run['train_seconds'] + run['compile_seconds'], 0
  first, rate = run.get('first_step', 0), None
  for r in train:
    if r['step'] > first:
      break
    rate = r['steps_per_second']
    seconds, last = seconds + (r['step'] - last) / rate, r['step']
  if first > last:  # Steps after its last summary (or all, if none), before the checkpoint.
    rate = rate or (run['step'] - first) / max(run['train_seconds'], 1e-9)
    seconds += (first - last) / rate
  return seconds


def read_cell(celldir: str) -> dict | None:
  """Final numbers and curves of one cell, or None if it has no metrics yet."""
  name = os.path.basename(celldir.rstrip('/'))
  cell = Cell.parse(name)
  path = os.path.join(celldir, run_dir.METRICS_FILE)
  diverged_path = os.path.join(celldir, run_dir.DIVERGED_FILE)
  # A cell that diverged before its first summary has no metrics, but counts.
  if not cell or not (os.path.exists(path) or os.path.exists(diverged_path)):
    return None
  records = metrics_io.read_records(celldir)
  by = lambda split: [r for r in records if r['split'] == split]
  train, val, test, run = by('train'), by('validation'), by('test'), by('run')
  diverged = None
  if os.path.exists(diverged_path):
    with open(diverged_path) as f:
      diverged = json.load(f)['step']
  final_step = run[-1]['step'] if run else None
  why = why_results.read(celldir)
  val_final = [r for r in val if r['step'] == final_step]
  return {
      'name': name, 'depth': cell.depth, 'shortcut': cell.shortcut,
      'variant': cell.variant, 'seed': cell.seed, 'done': bool(run), 'diverged_step': diverged,
      'params': int(run[-1]['params']) if run else None,
      'steps': final_step,
      'last_step': train[-1]['step'] if train else None,
      'train_error': 1 - train[-1]['accuracy'] if run and train else np.nan,
      'val_error': 1 - val_final[-1]['accuracy'] if val_final else np.nan,
      'test_error': 1 - test[-1]['accuracy'] if run and test else np.nan,
      'seconds': run_seconds(run[-1], train) if run else np.nan,
      'sharpness': why.get('sharpness', {}).get('eigenvalue', np.nan),
      'why': why,  # The why-skips analyses it has (analysis.why_skips).
      'train_curve': [(r['step'], 1 - r['accuracy']) for r in train],
      'val_curve': [(r['step'], 1 - r['accuracy']) for r in val],
  }


def saved_layer_analysis(celldir: str, num_examples: int) -> dict | None:
  """A cell's layer analysis as its CELL/analysis.json keeps it, if it is of
  `num_examples` images and of the cell's newest checkpoint (a cell whose checkpoints were
  deleted, to free disk, keeps the analysis it had); else None."""
  try:
    with open(os.path.join(celldir, run_dir.LAYER_ANALYSIS_FILE)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  step = run_dir.newest_step(celldir)
  if saved.get('examples') == num_examples and step in (saved.get('step'), None):
    return saved
  return None


def read_cells(workdir: str) -> list[dict]:
  if not os.path.isdir(workdir):
    raise ReportError(f'{workdir} is not a directory: pass the sweep\'s --workdir.')
  cells = []
  for name in sorted(os.listdir(workdir)):
    if os.path.isdir(os.path.join(workdir, name)):
      cell = read_cell(os.path.join(workdir, name))
      if cell:
        cells.append(cell)
  return cells


def _mean_std(values):
  """Mean and (population) std over seeds; one seed has no spread to show: std NaN."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return np.nan, np.nan
  return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else np.nan


def finished(cell: dict) -> bool:
  """A cell the table and the curves count: done, and not diverged."""
  return cell['done'] and cell['diverged_step'] is None


def unfinished(cell: dict) -> bool:
  """A cell still training, or stopped to resume: not done, not diverged, has logged."""
  return not cell['done'] and cell['diverged_step'] is None and cell['last_step'] is not None


def _group_order(key):
  return key[0], nets.order(key[1])


def _interval_means(curve, steps) -> dict:
  """{step: the mean of `curve` ((step, value) per logging interval, each weighted by its
  length) over the intervals that end in (the previous step, step]}, for each step of
  `steps` that the curve reached."""
  curve = sorted(dict(curve).items())
  logged = [s for s, _ in curve]
  lengths = np.diff([0] + logged)
  out, prev = {}, 0
  for step in steps:
    inside = [k for k, s in enumerate(logged) if prev < s <= step]
    if step in logged:
      out[step] = float(np.average([curve[k][1] for k in inside], weights=lengths[inside]))
    prev = step
  return out


def step_tables(cells: list[dict], max_rows: int = 12) -> str:
  """Validation and training error (%) of every (depth, net) at the same steps (each
  evaluation step), finished and unfinished cells alike: the comparison at matched steps
  that a sweep in progress allows. Means over the seeds that have reached the step;
  training error averaged over the logging intervals since the row before, since one
  interval alone is noisy."""
  alive = [c for c in cells if finished(c) or unfinished(c)]
  groups = sorted({(c['depth'], nets.of(c)) for c in alive}, key=_group_order)
  steps = sorted({s for c in alive for s, _ in c['val_curve']})
  if not groups or not steps:
    return ''
  if len(steps) > max_rows:  # Evenly spaced, the last kept.
    steps = [steps[i] for i in sorted(set(np.linspace(0, len(steps) - 1, max_rows)
                                          .round().astype(int)))]
  head = '| step | ' + ' | '.join(nets.short_label(*g) for g in groups) + ' |'
  out = []
  at_steps = {'val_curve': lambda curve: dict(curve),  # Evaluated at the step itself.
              'train_curve': lambda curve: _interval_means(curve, steps)}
  for curve, what in (('val_curve', 'Validation error (%)'),
                      ('train_curve', 'Training error (%, over the steps since the row '
                       'before)')):
    lines = [f'{what} at the same steps, mean over the seeds that reached them:', '',
             head, '|' + '---|' * (len(groups) + 1)]
    by_group = {g: [at_steps[curve](c[curve]) for c in alive
                    if (c['depth'], nets.of(c)) == g] for g in groups}
    for step in steps:
      row = []
      for g in groups:
        values = [curve_of[step] for curve_of in by_group[g] if step in curve_of]
        row.append(f'{100 * np.mean(values):.2f}' if values else '-')
      lines.append(f'| {step:,} | ' + ' | '.join(row) + ' |')
    out.append('\n'.join(lines) + '\n')
  return '\n'.join(out)


def progress_lines(cells: list[dict]) -> list[str]:
  """One line per unfinished cell: the step it has reached and its latest errors."""
  lines = []
  for c in cells:
    if not unfinished(c):
      continue
    line = (f'{c["name"]}: at step {c["last_step"]:,}, training error '
            f'{100 * c["train_curve"][-1][1]:.2f}%')
    if c['val_curve']:
      step, err = c['val_curve'][-1]
      line += f', validation error {100 * err:.2f}% at step {step:,}'
    lines.append(line)
  return lines


def summarise(cells: list[dict]) -> list[dict]:
  """One row per (depth, net): mean and std over seeds of the finished cells."""
  rows = []
  keys = sorted({(c['depth'], nets.of(c)) for c in cells}, key=_group_order)
  for depth, net in keys:
    group = [c for c in cells if (c['depth'], nets.of(c)) == (depth, net)]
    ok = [c for c in group if finished(c)]
    shortcut, variant = nets.parts(net)
    row = {'depth': depth, 'shortcut': shortcut, 'variant': variant, 'net': nets.label(net),
           'params': next((c['params'] for c in ok), None),
           'seeds_done': len(ok), 'diverged': sum(c['diverged_step'] is not None
                                                   for c in group),
           'steps': max((c['steps'] for c in ok), default=None)}
    for metric in ('train_error', 'val_error', 'test_error', 'seconds', 'sharpness'):
      row[f'{metric}_mean'], row[f'{metric}_std'] = _mean_std([c[metric] for c in ok])
    rows.append(row)
  return rows


STALL_POINTS = 5.0  # A run "stalls" if its final training error is this close to chance.


def chance_error(num_classes: int) -> float:
  """The training error in % of a constant prediction on balanced classes."""
  return 100 - 100 / num_classes


def stalled(cell: dict, num_classes: int) -> bool:
  """Whether a finished cell ended with its training error within STALL_POINTS of chance."""
  return finished(cell) and 100 * cell['train_error'] >= chance_error(num_classes) - STALL_POINTS


def failures_markdown(cells: list[dict], num_classes: int) -> str:
  """Which nets diverge or stall, and where: a line per (depth, net) with a seed that
  diverged (its step) or finished with its training error within STALL_POINTS of chance
  (100 - 100 / num_classes %); '' if none did."""
  chance = chance_error(num_classes)
  lines = []
  for depth, net in sorted({(c['depth'], nets.of(c)) for c in cells}, key=_group_order):
    notes = []
    for c in sorted((c for c in cells if (c['depth'], nets.of(c)) == (depth, net)),
                    key=lambda c: c['seed']):
      if c['diverged_step'] is not None:
        notes.append(f'seed {c["seed"]} diverged at step {c["diverged_step"]:,}')
      elif stalled(c, num_classes):
        notes.append(f'seed {c["seed"]} stalled at {100 * c["train_error"]:.2f}% training '
                     'error')
    if notes:
      lines.append(f'- {nets.short_label(depth, net)}: {"; ".join(notes)}.')
  if not lines:
    return ''
  return (f'Nets that diverged (a NaN or infinite loss) or stalled (a final training error '
          f'within {STALL_POINTS:g} points of chance, {chance:.0f}%):\n\n'
          + '\n'.join(lines) + '\n')


def _pct(mean, std):
  if not np.isfinite(mean):
    return '-'
  return f'{100 * mean:.2f} +- {100 * std:.2f}' if np.isfinite(std) else f'{100 * mean:.2f}'


def _number(mean, std):
  if not np.isfinite(mean):
    return '-'
  return f'{mean:.3g} +- {std:.2g}' if np.isfinite(std) else f'{mean:.3g}'


def results_markdown(rows, paper_table='') -> str:
  paper_table = paper.table_name(paper_table)
  head = ['depth', 'net', 'params', 'train error %', 'val error %', 'test error %', 'steps',
          'time / run (s)', 'seeds', 'diverged']
  sharp = any(np.isfinite(r.get('sharpness_mean', np.nan)) for r in rows)
  if sharp:
    head.append('sharpness')
  if paper_table:
    header, errors = paper.TABLES[paper_table]
    head.append(header)
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [str(r['depth']), r['net'],
             f'{r["params"]:,}' if r['params'] else '-',
             _pct(r['train_error_mean'], r['train_error_std']),
             _pct(r['val_error_mean'], r['val_error_std']),
             _pct(r['test_error_mean'], r['test_error_std']),
             str(r['steps'] or '-'),
             f'{r["seconds_mean"]:.0f}' if np.isfinite(r['seconds_mean']) else '-',
             str(r['seeds_done']), str(r['diverged'])]
    if sharp:
      cells.append(_number(r.get('sharpness_mean', np.nan), r.get('sharpness_std', np.nan)))
    if paper_table:
      # The paper's nets are the BN ones.
      cells.append(errors.get((r['shortcut'], r['depth']), '-')
                   if r.get('variant', 'bn') == 'bn' else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_csv(rows, path):
  fields = ['depth', 'shortcut', 'variant', 'net', 'params', 'seeds_done', 'diverged', 'steps',
            'train_error_mean', 'train_error_std', 'val_error_mean', 'val_error_std',
            'test_error_mean', 'test_error_std', 'seconds_mean', 'seconds_std',
            'sharpness_mean', 'sharpness_std']
  with run_dir.replacing(path) as tmp, open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)


def cells_data(workdir: str, cells: list[dict]) -> str:
  """The data set the cells trained on, from a cell's config.json ('' if none says)."""
  for cell in cells:
    try:
      with open(os.path.join(workdir, cell['name'], run_dir.CONFIG_FILE)) as f:
        return json.load(f)['data']['name']
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return ''


def num_classes(data: str) -> int:
  """The classes of the data set `data` (cells_data's; 10 where unknown)."""
  from resnet_jax import datasets
  return datasets.DATASETS[data].num_classes if data in datasets.DATASETS else 10


def read_ablation(workdir: str):
  """The sweep's ablation config as its driver wrote it, or None if there is none."""
  import ml_collections
  path = os.path.join(workdir, run_dir.SWEEP_RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
      raise ReportError(f'{path} is unreadable ({e}): rerun the sweep\'s command with '
                        '--report_only, which rewrites it and the report.') from e
