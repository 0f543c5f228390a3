"""The sweep's report: results.csv/.md, the figures and report.md, written into the sweep
directory from its cells' run records."""

import json
import os

from resnet_jax import nets
from resnet_jax import run_dir
from resnet_jax.analysis import figures
from resnet_jax.analysis import paper
from resnet_jax.analysis import results
from resnet_jax.analysis import why_figures
from resnet_jax.analysis import why_results

PROFILES_TEXT = """The landscapes above are one or two random directions each. Along
several others (the profiles: every cell's loss at fractions of a direction's length,
along further filter-normalised random directions), a claim about a net's basin holds
where it holds for the medians and the spread, not for one direction:
"""

WHY_TEXT = """## Why skips work (python -m experiments.why_skips)

- **Loss landscapes** (Li et al. 2018): the training loss (fixed training images,
  BatchNorm in inference mode) at theta* + a d1 + b d2 for random directions normalised
  filter by filter, in contours with the same levels for every net; the 1-D curves along
  one such direction and on the straight line from the initial to the trained weights. A
  wide, smooth basin around the centre is what makes a net easy to train; Li et al. found
  plain nets' surfaces turning chaotic with depth where residual nets' stay nearly convex.
- **Lesion study** (Veit et al. 2016): the test error with one shape-keeping block
  replaced by the identity, for every such block, and with k random blocks deleted. A
  residual net whose error barely moves behaves like an ensemble of shallower paths; a
  plain net has one path, and deleting a block breaks it.
- **Sharpness**: the top eigenvalue of the loss Hessian at the trained weights (power
  iteration on Hessian-vector products, fixed training images, BatchNorm in inference
  mode): the curvature of the sharpest direction; the `sharpness` column of the table
  above.

Means over the seeds analysed (landscapes: the first seed of each depth and net unless
asked for all; cells that stalled near chance are not analysed unless asked with
--stalled: they predict one class):
"""


def _layer_figures(workdir: str, cells: list[dict], ablation, data: str) -> list[str]:
  """The layer responses and gradient norms of each finished net's first seed (the
  workers' saved analyses, computed here for a cell without one); the figures written."""
  n = ablation.get('analysis_examples', 256) if ablation else 256
  seed = min(c['seed'] for c in cells)
  analyses = []
  for c in cells:
    if c['seed'] == seed and results.finished(c):
      celldir = os.path.join(workdir, c['name'])
      # A sweep's workers analyse their cells: JAX is imported only for one they did not.
      a = results.saved_layer_analysis(celldir, n)
      if a is None:
        from resnet_jax.analysis import layers
        try:
          a = layers.cell_analysis(celldir, n)
        except layers.UNAVAILABLE as e:
          print(f'No layer analysis of {c["name"]}: {e}', flush=True)
          continue
      analyses.append({**a, 'depth': c['depth'], 'shortcut': c['shortcut'],
                       'variant': c.get('variant', 'bn')})
  if not analyses:
    return []
  run_dir.write_text(os.path.join(workdir, run_dir.SWEEP_LAYER_ANALYSES),
                     json.dumps(analyses))
  figures.analysis_figure(
      analyses, ('response_std_final', 'response_std_final'),
      ('in layer order', 'sorted by magnitude'), 'std of response',
      os.path.join(workdir, 'layer_responses.png'),
      'Std of each conv layer\'s response (after BN, before addition/ReLU), trained '
      f'nets, held-out images{figures.on(data)}', sort_right=True)
  figures.analysis_figure(
      analyses, ('grad_norm_init', 'grad_norm_final'),
      ('at initialisation', f'after training (step {analyses[0]["step"]})'),
      'gradient l2 norm', os.path.join(workdir, 'gradient_norms.png'),
      f'Gradient norm of each block (plain dashed, residual solid){figures.on(data)}',
      log=True)
  return ['layer_responses.png', 'gradient_norms.png']


def write_report(workdir: str, ablation=None, analyse: bool = True) -> list[dict]:
  """Writes results.csv/.md, the figures and report.md into `workdir`; returns the rows."""
  import matplotlib
  matplotlib.use('Agg')
  cells = results.read_cells(workdir)
  if not cells and results.read_cell(workdir):
    raise results.ReportError(f'{workdir} is one cell\'s directory: pass the sweep directory '
                              f'that holds it ({os.path.dirname(os.path.abspath(workdir))}).')
  if not cells:
    raise results.ReportError(f'No ablation cells with metrics in {workdir}: run the sweep '
                              'first.')
  rows = results.summarise(cells)
  data = results.cells_data(workdir, cells)
  table = results.results_markdown(rows, paper.table_for(ablation, data))
  results.write_csv(rows, os.path.join(workdir, 'results.csv'))
  run_dir.write_text(os.path.join(workdir, 'results.md'), table)
  figures.plot_training_curves(cells, os.path.join(workdir, 'training_curves.png'), data)
  figures.plot_depth_vs_error(rows, os.path.join(workdir, 'depth_vs_error.png'), data)
  written = ['training_curves.png', 'depth_vs_error.png']
  if analyse:
    written += _layer_figures(workdir, cells, ablation, data)
  done = [c for c in cells if results.finished(c)]
  why_written = why_figures.write_figures(done, workdir, data)
  written += why_written
  preset = ablation.get('preset') if ablation else None  # None: no ablation.json.
  about = ', '.join(filter(None, [f'{preset} preset' if preset else '', data]))
  title = '# Depth ablation: plain versus residual' + (f' ({about})' if about else '')
  lines = [title, '',
           'Errors are in %, mean +- std over seeds (one seed: its value). Training error: '
           'the last logging interval of training; validation: the held-out part of the '
           'training set; test: the test split, evaluated once at the end.', '', table, '']
  progress = results.progress_lines(cells)
  if progress:
    lines += ['Unfinished cells (the table counts finished ones only; the curves of a '
              'depth and net with none finished are drawn from its unfinished ones):', '']
    lines += [f'- {line}' for line in progress] + ['']
  failures = results.failures_markdown(cells, results.num_classes(data))
  if failures:
    lines += [failures]
  steps = results.step_tables(cells)
  if steps:
    lines += [steps]
  lines += [f'![{f}]({f})\n' for f in written if f not in why_written]
  if why_written:
    lines += [WHY_TEXT, why_results.summary_markdown(done, nets.short_label)]
    profiles = why_results.profiles_markdown(done, nets.short_label)
    if profiles:
      lines += [PROFILES_TEXT, profiles]
    lines += [f'![{f}]({f})\n' for f in why_written]
  run_dir.write_text(os.path.join(workdir, 'report.md'), '\n'.join(lines))
  running_now = ''.join(f'unfinished: {line}\n' for line in progress)
  print(f'\n{table}\n{running_now}Wrote the report into {workdir}: report.md, results.csv, '
        f'results.md, {", ".join(written)}.', flush=True)
  return rows
