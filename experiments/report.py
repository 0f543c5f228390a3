"""The ablation report: results.csv/.md, the figures and report.md, from the cell directories.

python -m experiments.report --workdir=runs/ablation   (regenerates it alone)
"""

import csv
import json
import os
import re
import sys

import numpy as np

from resnet_jax import cli
from resnet_jax import run_dir

# He et al. 2016: the errors (%) the paper reports, by (shortcut, depth), with the
# results table's header for them. An ablation config's `paper_table` names one.
PAPER_TABLES = {
    # Table 6: CIFAR-10 test error of ResNets with option A.
    'cifar10': ('paper test error %', {
        ('A', 20): '8.75', ('A', 32): '7.51', ('A', 44): '7.17', ('A', 56): '6.97',
        ('A', 110): '6.43 (6.61 +- 0.16)', ('A', 1202): '7.93'}),
    # Table 2: ImageNet validation top-1 error, 10-crop testing, plain and option A.
    'imagenet': ('paper val error % (top-1, 10-crop)', {
        ('none', 18): '27.94', ('none', 34): '28.54', ('A', 18): '27.88',
        ('A', 34): '25.03'}),
}


# The data set (its name in resnet_jax.datasets) each table's errors are of.
PAPER_DATA = {'cifar10': 'cifar10', 'imagenet': 'imagenet2012'}


def paper_table_name(value) -> str:
  """An ablation config's `paper_table`: a name of PAPER_TABLES, or '' for none (sweeps
  written before ImageNet had a table stored True for CIFAR-10's)."""
  if value is True:
    return 'cifar10'
  if not value:
    return ''
  if value not in PAPER_TABLES:
    raise ReportError(f'paper_table={value!r} is not a table of the paper here: use one of '
                      f'{", ".join(PAPER_TABLES)}, or \'\' for none.')
  return value


def paper_table_for(ablation, data: str) -> str:
  """The paper's table to put beside the cells' errors: the sweep's `paper_table` where
  the cells trained on that table's data set (or an unknown one), else none."""
  table = paper_table_name(ablation.get('paper_table', '') if ablation else '')
  return '' if table and data and PAPER_DATA[table] != data else table


CELL_RE = re.compile(r'^(plain|resnet(?P<sc>\w+?))-(?P<depth>\d+)-seed(?P<seed>\d+)$')


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
  m = CELL_RE.match(name)
  path = os.path.join(celldir, 'metrics.jsonl')
  diverged_path = os.path.join(celldir, 'diverged.json')
  # A cell that diverged before its first summary has no metrics, but counts.
  if not m or not (os.path.exists(path) or os.path.exists(diverged_path)):
    return None
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue
  by = lambda split: [r for r in records if r['split'] == split]
  train, val, test, run = by('train'), by('validation'), by('test'), by('run')
  diverged = None
  if os.path.exists(diverged_path):
    with open(diverged_path) as f:
      diverged = json.load(f)['step']
  final_step = run[-1]['step'] if run else None
  val_final = [r for r in val if r['step'] == final_step]
  return {
      'name': name, 'depth': int(m['depth']), 'shortcut': m['sc'] or 'none',
      'seed': int(m['seed']), 'done': bool(run), 'diverged_step': diverged,
      'params': int(run[-1]['params']) if run else None,
      'steps': final_step,
      'last_step': train[-1]['step'] if train else None,
      'train_error': 1 - train[-1]['accuracy'] if run and train else np.nan,
      'val_error': 1 - val_final[-1]['accuracy'] if val_final else np.nan,
      'test_error': 1 - test[-1]['accuracy'] if run and test else np.nan,
      'seconds': run_seconds(run[-1], train) if run else np.nan,
      'train_curve': [(r['step'], 1 - r['accuracy']) for r in train],
      'val_curve': [(r['step'], 1 - r['accuracy']) for r in val],
  }


class ReportError(ValueError):
  """The directory cannot be reported: no cells with metrics, or an unreadable ablation.json."""


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


def kind(shortcut: str) -> str:
  return 'plain' if shortcut == 'none' else f'residual ({shortcut})'


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
  return key[0], key[1] != 'none', key[1]


def shortcut_styles(shortcuts) -> dict:
  """{shortcut: (colour, line style)}: plain red and dashed, and each residual option a
  colour and style of its own (A, the paper's, blue and solid), so that a sweep over
  shortcut options tells them apart."""
  residual = sorted(set(shortcuts) - {'none'}, key=lambda s: (s != 'A', s))
  colors = ['tab:blue', 'tab:green', 'tab:purple', 'tab:orange', 'tab:brown']
  lines = ['-', '-.', ':', (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
  styles = {'none': ('tab:red', '--')}
  for i, s in enumerate(residual):
    styles[s] = (colors[i % len(colors)], lines[i % len(lines)])
  return styles


def _group_label(depth: int, shortcut: str) -> str:
  return f'{"plain" if shortcut == "none" else f"ResNet({shortcut})"}-{depth}'


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
  groups = sorted({(c['depth'], c['shortcut']) for c in alive}, key=_group_order)
  steps = sorted({s for c in alive for s, _ in c['val_curve']})
  if not groups or not steps:
    return ''
  if len(steps) > max_rows:  # Evenly spaced, the last kept.
    steps = [steps[i] for i in sorted(set(np.linspace(0, len(steps) - 1, max_rows)
                                          .round().astype(int)))]
  head = '| step | ' + ' | '.join(_group_label(*g) for g in groups) + ' |'
  out = []
  at_steps = {'val_curve': lambda curve: dict(curve),  # Evaluated at the step itself.
              'train_curve': lambda curve: _interval_means(curve, steps)}
  for curve, what in (('val_curve', 'Validation error (%)'),
                      ('train_curve', 'Training error (%, over the steps since the row '
                       'before)')):
    lines = [f'{what} at the same steps, mean over the seeds that reached them:', '',
             head, '|' + '---|' * (len(groups) + 1)]
    by_group = {g: [at_steps[curve](c[curve]) for c in alive
                    if (c['depth'], c['shortcut']) == g] for g in groups}
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
  """One row per (depth, shortcut): mean and std over seeds of the finished cells."""
  rows = []
  keys = sorted({(c['depth'], c['shortcut']) for c in cells}, key=_group_order)
  for depth, shortcut in keys:
    group = [c for c in cells if (c['depth'], c['shortcut']) == (depth, shortcut)]
    ok = [c for c in group if finished(c)]
    row = {'depth': depth, 'shortcut': shortcut, 'net': kind(shortcut),
           'params': next((c['params'] for c in ok), None),
           'seeds_done': len(ok), 'diverged': sum(c['diverged_step'] is not None
                                                   for c in group),
           'steps': max((c['steps'] for c in ok), default=None)}
    for metric in ('train_error', 'val_error', 'test_error', 'seconds'):
      row[f'{metric}_mean'], row[f'{metric}_std'] = _mean_std([c[metric] for c in ok])
    rows.append(row)
  return rows


def _pct(mean, std):
  if not np.isfinite(mean):
    return '-'
  return f'{100 * mean:.2f} +- {100 * std:.2f}' if np.isfinite(std) else f'{100 * mean:.2f}'


def results_markdown(rows, paper_table='') -> str:
  paper_table = paper_table_name(paper_table)
  head = ['depth', 'net', 'params', 'train error %', 'val error %', 'test error %', 'steps',
          'time / run (s)', 'seeds', 'diverged']
  if paper_table:
    header, paper = PAPER_TABLES[paper_table]
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
    if paper_table:
      cells.append(paper.get((r['shortcut'], r['depth']), '-'))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def save_figure(fig, path):
  """Writes `fig` as a PNG through `run_dir.replacing` and frees it."""
  import matplotlib.pyplot as plt
  with run_dir.replacing(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)


def write_csv(rows, path):
  fields = ['depth', 'shortcut', 'net', 'params', 'seeds_done', 'diverged', 'steps',
            'train_error_mean', 'train_error_std', 'val_error_mean', 'val_error_std',
            'test_error_mean', 'test_error_std', 'seconds_mean', 'seconds_std']
  with run_dir.replacing(path) as tmp, open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)


def _mean_curve(curves):
  """Averages (step, value) curves over seeds on their common steps."""
  common = sorted(set.intersection(*[set(s for s, _ in c) for c in curves])) if curves else []
  return common, [np.mean([dict(c)[s] for c in curves]) for s in common]


def _on(data: str) -> str:
  """The data set for a figure's title: ', fashion_mnist' ('' where unknown)."""
  return f', {data}' if data else ''


def _depth_colors(depths):
  import matplotlib.pyplot as plt
  cmap = plt.get_cmap('viridis')
  depths = sorted(depths)
  return {d: cmap(i / max(len(depths) - 1, 1) * 0.9) for i, d in enumerate(depths)}


def plot_training_curves(cells, path, data=''):
  import matplotlib.pyplot as plt
  shortcuts = sorted({c['shortcut'] for c in cells}, key=lambda s: (s != 'none', s))
  colors = _depth_colors({c['depth'] for c in cells})
  fig, axes = plt.subplots(1, len(shortcuts), figsize=(6 * len(shortcuts), 4.5), sharey=True,
                           squeeze=False)
  for ax, shortcut in zip(axes[0], shortcuts):
    for depth in sorted(colors):
      # The table's cells: a diverged seed's curve would cut the mean curve at its step.
      # A (depth, net) none of whose seeds has finished is drawn from its unfinished ones.
      group = [c for c in cells if (c['depth'], c['shortcut']) == (depth, shortcut)
               and c['train_curve']]
      done = [c for c in group if finished(c)]
      group, note = (done, '') if done else ([c for c in group if unfinished(c)],
                                             ' (unfinished)')
      if not group:
        continue
      steps, err = _mean_curve([c['train_curve'] for c in group])
      ax.plot(steps, np.array(err) * 100, '--', color=colors[depth], alpha=0.8)
      steps, err = _mean_curve([c['val_curve'] for c in group if c['val_curve']])
      label = f'{"plain" if shortcut == "none" else "ResNet"}-{depth}{note}'
      ax.plot(steps, np.array(err) * 100, '-o', color=colors[depth], lw=2, ms=3, label=label)
    ax.set_title(f'{kind(shortcut)} nets')
    ax.set_xlabel('iterations')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(title='solid: held-out, dashed: training')
  axes[0][0].set_ylabel('error (%)')
  fig.suptitle('Training (dashed) and held-out validation (solid) error, mean over seeds'
               + _on(data))
  fig.tight_layout()
  save_figure(fig, path)


def plot_depth_vs_error(rows, path, data=''):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  styles = shortcut_styles(r['shortcut'] for r in rows)
  for shortcut in sorted({r['shortcut'] for r in rows}, key=lambda s: (s != 'none', s)):
    rs = sorted([r for r in rows if r['shortcut'] == shortcut and r['seeds_done']],
                key=lambda r: r['depth'])
    if not rs:
      continue
    color = styles[shortcut][0]
    d = [r['depth'] for r in rs]
    for metric, style, what in (('train_error', '--', 'training'), ('test_error', '-', 'test')):
      ax.errorbar(d, [100 * r[f'{metric}_mean'] for r in rs],  # One seed: no error bar.
                  yerr=[100 * np.nan_to_num(r[f'{metric}_std']) for r in rs],
                  fmt=style + 'o', color=color,
                  capsize=3, label=f'{kind(shortcut)}, {what}',
                  alpha=1.0 if metric == 'test_error' else 0.6)
  depths = sorted({r['depth'] for r in rows if r['seeds_done']})
  if depths:
    ax.set_xticks(depths)  # The grid's depths, not round numbers between them.
  ax.set_xlabel('depth (layers)')
  ax.set_ylabel('final error (%)')
  ax.set_title('Final error against depth (mean +- std over seeds)' + _on(data))
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # Nothing finished yet: no legend to draw.
    ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def _analysis_figure(analyses, key_pair, titles, ylabel, path, suptitle, log=False,
                     sort_right=False):
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator
  colors = _depth_colors({a['depth'] for a in analyses})
  styles = shortcut_styles(a['shortcut'] for a in analyses)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for panel, (ax, key, title) in enumerate(zip(axes, key_pair, titles)):
    for a in sorted(analyses, key=lambda a: (a['depth'], a['shortcut'])):
      values = np.array(a[key])
      if sort_right and panel == 1:  # By panel: both panels may draw the same key.
        values = np.sort(values)[::-1]
      ax.plot(np.arange(1, len(values) + 1), values, linestyle=styles[a['shortcut']][1],
              color=colors[a['depth']],
              label=_group_label(a['depth'], a['shortcut']))
    ax.set_title(title)
    ax.set_xlabel('layer index' if 'response' in key else 'block index')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # No layer 2.5.
    ax.set_ylabel(ylabel)
    if log:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8, ncol=2)
  fig.suptitle(suptitle)
  fig.tight_layout()
  save_figure(fig, path)


def write_report(workdir: str, ablation=None, analyse: bool = True) -> list[dict]:
  """Writes results.csv/.md, the figures and report.md into `workdir`; returns the rows."""
  import matplotlib
  matplotlib.use('Agg')
  cells = read_cells(workdir)
  if not cells and read_cell(workdir):
    raise ReportError(f'{workdir} is one cell\'s directory: pass the sweep directory that '
                      f'holds it ({os.path.dirname(os.path.abspath(workdir))}).')
  if not cells:
    raise ReportError(f'No ablation cells with metrics in {workdir}: run the sweep first.')
  rows = summarise(cells)
  data = cells_data(workdir, cells)
  table = results_markdown(rows, paper_table_for(ablation, data))
  write_csv(rows, os.path.join(workdir, 'results.csv'))
  run_dir.write_text(os.path.join(workdir, 'results.md'), table)
  plot_training_curves(cells, os.path.join(workdir, 'training_curves.png'), data)
  plot_depth_vs_error(rows, os.path.join(workdir, 'depth_vs_error.png'), data)
  figures = ['training_curves.png', 'depth_vs_error.png']
  if analyse:
    from experiments import analysis
    n = ablation.get('analysis_examples', 256) if ablation else 256
    seed = min(c['seed'] for c in cells)
    analyses = []
    for c in cells:
      if c['seed'] == seed and finished(c):
        try:
          a = analysis.cell_analysis(os.path.join(workdir, c['name']), n)
        except analysis.UNAVAILABLE as e:
          print(f'No layer analysis of {c["name"]}: {e}', flush=True)
          continue
        analyses.append({**a, 'depth': c['depth'], 'shortcut': c['shortcut']})
    if analyses:
      run_dir.write_text(os.path.join(workdir, 'analysis.json'), json.dumps(analyses))
      _analysis_figure(analyses, ('response_std_final', 'response_std_final'),
                       ('in layer order', 'sorted by magnitude'), 'std of response',
                       os.path.join(workdir, 'layer_responses.png'),
                       'Std of each conv layer\'s response (after BN, before addition/ReLU), '
                       f'trained nets, held-out images{_on(data)}', sort_right=True)
      _analysis_figure(analyses, ('grad_norm_init', 'grad_norm_final'),
                       ('at initialisation', f'after training (step {analyses[0]["step"]})'),
                       'gradient l2 norm', os.path.join(workdir, 'gradient_norms.png'),
                       f'Gradient norm of each block (plain dashed, residual solid){_on(data)}',
                       log=True)
      figures += ['layer_responses.png', 'gradient_norms.png']
  preset = ablation.get('preset') if ablation else None  # None: no ablation.json.
  about = ', '.join(filter(None, [f'{preset} preset' if preset else '', data]))
  title = '# Depth ablation: plain versus residual' + (f' ({about})' if about else '')
  lines = [title, '',
           'Errors are in %, mean +- std over seeds (one seed: its value). Training error: '
           'the last logging interval of training; validation: the held-out part of the '
           'training set; test: the test split, evaluated once at the end.', '', table, '']
  progress = progress_lines(cells)
  if progress:
    lines += ['Unfinished cells (the table counts finished ones only; the curves of a '
              'depth and net with none finished are drawn from its unfinished ones):', '']
    lines += [f'- {line}' for line in progress] + ['']
  steps = step_tables(cells)
  if steps:
    lines += [steps]
  lines += [f'![{f}]({f})\n' for f in figures]
  run_dir.write_text(os.path.join(workdir, 'report.md'), '\n'.join(lines))
  running_now = ''.join(f'unfinished: {line}\n' for line in progress)
  print(f'\n{table}\n{running_now}Wrote the report into {workdir}: report.md, results.csv, '
        f'results.md, {", ".join(figures)}.', flush=True)
  return rows


def cells_data(workdir: str, cells: list[dict]) -> str:
  """The data set the cells trained on, from a cell's config.json ('' if none says)."""
  for cell in cells:
    try:
      with open(os.path.join(workdir, cell['name'], 'config.json')) as f:
        return json.load(f)['data']['name']
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return ''


def read_ablation(workdir: str):
  """The sweep's ablation config as its driver wrote it, or None if there is none."""
  import ml_collections
  path = os.path.join(workdir, 'ablation.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
      raise ReportError(f'{path} is unreadable ({e}): rerun the sweep\'s command with '
                        '--report_only, which rewrites it and the report.') from e


def main(argv):
  cli.refuse_arguments(argv)
  from absl import flags
  from absl import logging
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Its table and the figures' names are printed.
  workdir = flags.FLAGS.workdir
  try:
    write_report(workdir, read_ablation(workdir), analyse=not flags.FLAGS.no_analysis)
  except ReportError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  from absl import app
  from absl import flags as _flags
  _flags.DEFINE_string('workdir', None, 'The sweep directory.', required=True)
  _flags.DEFINE_bool('no_analysis', False, 'Skip the layer and gradient analysis.')
  app.run(main)
