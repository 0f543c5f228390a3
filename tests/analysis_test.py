"""The analysis of a sweep's cells: the report on known metrics, its tables and figures,
the paper's columns, the layer analysis's gradient probe."""

import csv
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from resnet_jax import config_lib
from resnet_jax import run_dir
from resnet_jax.analysis import figures
from resnet_jax.analysis import layers
from resnet_jax.analysis import paper
from resnet_jax.analysis import report
from resnet_jax.analysis import results
from resnet_jax.sweep import ablation as ablation_lib
from tests.conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'configs'))
import ablation as ablation_config  # noqa: E402  pylint: disable=g-import-not-at-top


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
  with pytest.raises(results.ReportError, match=f"^{tmp_path}/sweep/plain-20-seed0 is one cell's "
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
    norms = layers.gradient_norms_fn(zero)
    assert not np.any(np.asarray(norms(v_zero, images, labels)))  # No gradient comes back.
    probed = layers.probe_params(zero, v_zero['params'], rng, shape)
    jax.tree_util.tree_map(np.testing.assert_array_equal, probed, v_default['params'])
    got = norms({**v_zero, 'params': probed}, images, labels)
    np.testing.assert_allclose(got, norms(v_default, images, labels), rtol=1e-6)
    assert np.all(np.asarray(got) > 0)
    # A net with a random head is probed as it is.
    assert layers.probe_params(default, v_default['params'], rng, shape) is v_default['params']
  # Params on a mesh (a restored run's) are probed on it: one program serves both states.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  on_mesh = jax.device_put(v_zero, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  probed = layers.probe_params(zero, on_mesh['params'], rng, shape)
  norms = layers.gradient_norms_fn(zero)
  for v in (on_mesh, {**on_mesh, 'params': probed}):
    norms(v, images, labels)
  assert norms._cache_size() == 1


def test_a_resumed_cells_time_counts_its_earlier_sessions():
  train = [{'step': s, 'steps_per_second': r} for s, r in ((25, 5.0), (50, 5.0), (75, 2.5))]
  run = {'step': 100, 'train_seconds': 10.0, 'compile_seconds': 2.0}
  assert results.run_seconds(run, train) == 12.0  # One session (or written before first_step).
  assert results.run_seconds(dict(run, first_step=0), train) == 12.0
  # Resumed from step 60: steps 0-50 at their summaries' speeds, 50-60 at the last one's.
  assert results.run_seconds(dict(run, first_step=60), train) == 12.0 + 5 + 5 + 2
  # Resumed from step 20, before any summary: at the last session's speed, 80 steps in 10 s.
  assert results.run_seconds(dict(run, first_step=20), train) == 12.0 + 2.5


def test_report_on_known_metrics(tmp_path, monkeypatch):
  plotted, titles, save_figure = {}, {}, figures.save_figure

  def spy(fig, path):  # What each figure draws: (label, style, x, y), and its title.
    titles[os.path.basename(path)] = (fig._suptitle.get_text() if fig._suptitle else
                                      fig.axes[0].get_title())
    plotted[os.path.basename(path)] = [
        [(l.get_label(), l.get_linestyle(), list(l.get_xdata()), list(l.get_ydata()))
         for l in ax.get_lines()] + [(c.get_label(), list(c.lines[0].get_ydata()))
                                     for c in ax.containers] for ax in fig.axes]
    return save_figure(fig, path)

  monkeypatch.setattr(figures, 'save_figure', spy)
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
  figures.analysis_figure(analyses, ('response_std_final', 'response_std_final'),
                          ('in layer order', 'sorted'), 'std', str(tmp_path / 'f.png'), 't',
                          sort_right=True)
  assert drawn == [[[1.0, 3.0, 2.0]], [[3.0, 2.0, 1.0]]]


def test_each_shortcut_option_is_drawn_in_a_style_of_its_own(tmp_path, monkeypatch):
  styles = figures.net_styles(['none', 'C', 'A', 'B', 'A'])
  assert styles['none'] == ('tab:red', '--') and styles['A'] == ('tab:blue', '-')
  assert len({c for c, _ in styles.values()}) == len({l for _, l in styles.values()}) == 4
  # Nets without BatchNorm keep the BN nets' styles and take colours of their own.
  more = figures.net_styles(['none', 'C', 'A', 'B', 'A+fixup', 'none+tat', 'A+nonorm'])
  assert {k: more[k] for k in styles} == styles
  assert len({c for c, _ in more.values()}) == 7 and more['none+tat'][1] == ':'
  drawn = {}

  def spy(fig, path):  # Each figure's (label, colour, line style), errorbars' too.
    drawn[os.path.basename(path)] = {
        (label, line.get_color(), line.get_linestyle()) for ax in fig.axes
        for label, line in [*((l.get_label(), l) for l in ax.get_lines()),
                            *((c.get_label(), c.lines[0]) for c in ax.containers)]
        if not label.startswith('_')}
    import matplotlib.pyplot as plt
    plt.close(fig)

  monkeypatch.setattr(figures, 'save_figure', spy)
  for name in ('plain-20-seed0', 'resnetA-20-seed0', 'resnetB-20-seed0'):
    write_cell(str(tmp_path), name, 0.9, 0.9, 0.9)
  report.write_report(str(tmp_path), analyse=False)
  colours = {label.split(',')[0]: colour for label, colour, _ in drawn['depth_vs_error.png']}
  assert colours == {'plain': 'tab:red', 'residual (A)': 'tab:blue',
                     'residual (B)': 'tab:green'}
  analyses = [{'depth': 20, 'shortcut': s, 'response_std_final': [1.0, 2.0]}
              for s in ('none', 'A', 'B')]
  figures.analysis_figure(analyses, ('response_std_final', 'response_std_final'), ('a', 'b'),
                          'std', str(tmp_path / 'layers.png'), 't')
  assert {(label, style) for label, _, style in drawn['layers.png']} == {
      ('plain-20', '--'), ('ResNet(A)-20', '-'), ('ResNet(B)-20', '-.')}


def test_report_of_a_sweep_in_progress(tmp_path, monkeypatch):
  """Unfinished cells: listed with their step, in the step-matched tables beside finished
  ones, and drawn in the curves where their depth and net has no finished seed."""
  labels, save_figure = {}, figures.save_figure

  def spy(fig, path):
    labels[os.path.basename(path)] = [[l.get_label() for l in ax.get_lines()]
                                      for ax in fig.axes]
    return save_figure(fig, path)

  monkeypatch.setattr(figures, 'save_figure', spy)
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
  means = results._interval_means(curve, [100, 250, 300])
  assert means.keys() == {100, 250}  # Step 300 not reached.
  np.testing.assert_allclose(means[100], 0.4)
  np.testing.assert_allclose(means[250], (0.2 * 100 + 0.5 * 50) / 150)


def test_step_tables_keep_at_most_max_rows_with_the_last():
  cells = [{'depth': 20, 'shortcut': 'A', 'done': True, 'diverged_step': None,
            'last_step': 1000, 'val_curve': [(s, 0.5) for s in range(50, 1001, 50)],
            'train_curve': [(s, 0.4) for s in range(50, 1001, 50)]}]
  val = results.step_tables(cells, max_rows=5).split('\n\n')[1]
  assert [line.split(' | ')[0] for line in val.splitlines()[2:]] == [
      '| 50', '| 300', '| 550', '| 750', '| 1,000']


def test_paper_table_column():
  rows = [{'depth': 56, 'shortcut': 'A', 'net': 'residual (A)', 'params': 853018,
           'train_error_mean': 0.01, 'train_error_std': 0.0, 'val_error_mean': 0.07,
           'val_error_std': 0.0, 'test_error_mean': 0.07, 'test_error_std': 0.001,
           'steps': 64000, 'seconds_mean': 100.0, 'seeds_done': 5, 'diverged': 0}]
  assert '| 6.97 |' in results.results_markdown(rows, paper_table='cifar10')
  imagenet_rows = [dict(r, depth=d, shortcut=s, net=n) for r in rows for d in (18, 34)
                   for s, n in (('none', 'plain'), ('A', 'residual (A)'))]
  md = results.results_markdown(imagenet_rows, paper_table='imagenet')
  assert 'paper val error % (top-1, 10-crop)' in md.splitlines()[0]
  assert [line.split(' | ')[-1] for line in md.splitlines()[2:]] == [
      '27.94 |', '27.88 |', '28.54 |', '25.03 |']
  assert 'paper' not in results.results_markdown(rows, paper_table='')
  with pytest.raises(config_lib.ConfigError, match="paper_table='cifar100' is not a table"):
    results.results_markdown(rows, paper_table='cifar100')


def test_no_paper_table_beside_cells_of_another_data_set(capsys):
  ab = ablation_config.get_config('paper')
  saved = ablation_lib.saved_ablation(ab, 'cifar10')
  assert saved.paper_table == 'cifar10' and capsys.readouterr().out == ''
  assert saved.overrides.to_dict() == {'log_every_steps': 200}  # No unset placeholders.
  ab.overrides.data.name = 'cifar100'
  saved = ablation_lib.saved_ablation(ab, 'cifar100')
  assert saved.overrides.data.name == 'cifar100'
  assert capsys.readouterr().out == ('The cells train on cifar100: the report leaves out the '
                                     'paper\'s errors, which are of cifar10.\n')
  assert paper.table_for(saved, 'cifar100') == ''
  assert paper.table_for(saved, '') == 'cifar10'  # Cells of an unknown data set.
  imagenet = ablation_lib.saved_ablation(ablation_config.get_config('imagenet'), 'imagenet2012')
  assert paper.table_for(imagenet, 'imagenet2012') == 'imagenet'
  assert capsys.readouterr().out == ''


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
