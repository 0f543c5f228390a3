"""The normalisation preset: a grid of variants (BatchNorm off, SkipInit, Fixup, TAT) by
depth, shortcut and seed, their cells' names and configs, and the report of them."""

import csv
import os
import subprocess
import sys

import pytest

from resnet_jax import config_lib
from resnet_jax import nets
from resnet_jax.analysis import figures
from resnet_jax.analysis import report
from resnet_jax.analysis import results
from resnet_jax.sweep import ablation as ablation_lib
from resnet_jax.sweep import cells as cells_lib
from tests.analysis_test import write_cell
from tests.conftest import REPO
from tests.sweep_test import tiny_ablation

sys.path.insert(0, os.path.join(REPO, 'configs'))
import ablation as ablation_config  # noqa: E402  pylint: disable=g-import-not-at-top


def test_the_preset_crosses_each_variant_with_the_nets_it_makes():
  ab = ablation_config.get_config('normalisation')
  cells = cells_lib.grid(ab)
  assert sorted({c.net for c in cells}, key=nets.order) == [
      'none', 'none+nonorm', 'none+tat', 'A', 'A+nonorm', 'A+skipinit', 'A+fixup']
  assert len(cells) == 7 * 2 * 2 and {c.depth for c in cells} == {20, 56}
  assert all(cells_lib.Cell.parse(c.name) == c for c in cells)
  assert {c.name for c in cells if c.depth == 56 and c.seed == 1} == {
      'plain-56-seed1', 'plain-nonorm-56-seed1', 'plain-tat-56-seed1', 'resnetA-56-seed1',
      'resnetA-nonorm-56-seed1', 'resnetA-skipinit-56-seed1', 'resnetA-fixup-56-seed1'}
  # One recipe for every net: a variant's cell differs from its BN twin in its model keys.
  bn = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'A', 1))
  fixup = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'A', 1, 'fixup'))
  tat = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'none', 1, 'tat'))
  plain = ablation_lib.cell_config(ab, cells_lib.Cell(56, 'none', 1))
  assert config_lib.config_changes(bn.to_dict(), fixup.to_dict()) == [
      'model.branch_scale: none -> fixup', 'model.norm: batch -> none']
  assert config_lib.config_changes(plain.to_dict(), tat.to_dict()) == [
      'model.activation: relu -> tat', 'model.norm: batch -> none']
  assert bn.num_train_steps == 300 and bn.model.num_filters == 8
  full = cells_lib.grid(ablation_config.get_config('normalisation_full'))
  assert {c.net for c in full} == {c.net for c in cells} and len(full) == 7 * 3 * 2


def test_the_other_presets_keep_their_bn_nets_and_names():
  cells = cells_lib.grid(ablation_config.get_config('quick'))
  assert {c.variant for c in cells} == {'bn'} and cells[0].name == 'plain-20-seed0'


def test_bad_variants_and_overrides_of_their_keys_are_refused_naming_the_key():
  ab = ablation_config.get_config('normalisation')
  ab.variants = ('bn', 'batchnorm')
  with pytest.raises(config_lib.ConfigError, match=r"^config.variants: Unknown variant "
                                                   r"'batchnorm'"):
    cells_lib.grid(ab)
  ab = ablation_config.get_config('normalisation')
  ab.overrides.model.norm = 'none'
  with pytest.raises(config_lib.ConfigError, match=r'config.overrides.model.norm would give '
                                                   r'every cell one norm.*--config.variants'):
    cells_lib.grid(ab)
  # A grid of BN nets alone may set them for every cell, as before the variants.
  quick = ablation_config.get_config('quick')
  quick.overrides.model.norm = 'none'
  assert len(cells_lib.grid(quick)) == 16
  ab = ablation_config.get_config('normalisation')
  ab.shortcuts, ab.variants = ('none',), ('skipinit', 'fixup')
  with pytest.raises(config_lib.ConfigError, match='SkipInit and Fixup need a shortcut'):
    cells_lib.grid(ab)
  ab = ablation_config.get_config('normalisation')
  ab.exclude = ('A+fixup-56,none+tat-20',)
  names = {c.name for c in cells_lib.grid(ab)}
  assert len(names) == 28 - 4 and 'resnetA-fixup-56-seed0' not in names
  assert 'plain-tat-56-seed0' in names and 'plain-tat-20-seed0' not in names
  ab.exclude = ('A+bogus-56',)
  with pytest.raises(config_lib.ConfigError, match=r"config.exclude holds 'A\+bogus-56'"):
    cells_lib.grid(ab)


def test_the_report_groups_and_labels_each_variant(tmp_path, monkeypatch):
  titles = {}
  save_figure = figures.save_figure

  def spy(fig, path):
    titles[os.path.basename(path)] = [ax.get_title() for ax in fig.axes]
    return save_figure(fig, path)

  monkeypatch.setattr(figures, 'save_figure', spy)
  root = str(tmp_path)
  write_cell(root, 'resnetA-20-seed0', 0.95, 0.92, 0.91)
  write_cell(root, 'resnetA-fixup-20-seed0', 0.90, 0.88, 0.87)
  write_cell(root, 'resnetA-fixup-20-seed1', 0.80, 0.86, 0.85)
  write_cell(root, 'plain-tat-20-seed0', 0.70, 0.60, 0.60)
  write_cell(root, 'plain-nonorm-20-seed0', 0.0, 0.0, 0.0, diverged=40)
  rows = report.write_report(root, None, analyse=False)
  assert [(r['net'], r['seeds_done'], r['diverged']) for r in rows] == [
      ('plain, no norm', 0, 1), ('plain, TAT', 1, 0), ('residual (A)', 1, 0),
      ('residual (A), Fixup', 2, 0)]
  with open(tmp_path / 'results.csv') as f:
    assert [(r['shortcut'], r['variant']) for r in csv.DictReader(f)] == [
        ('none', 'nonorm'), ('none', 'tat'), ('A', 'bn'), ('A', 'fixup')]
  assert titles['training_curves.png'] == [
      'plain, no norm nets', 'plain, TAT nets', 'residual (A) nets',
      'residual (A), Fixup nets']
  md = (tmp_path / 'results.md').read_text()
  assert '| 20 | residual (A), Fixup | 1,234 | 15.00 +- 5.00 |' in md
  # Which nets diverged or stalled, and where (chance: 90% on 10 classes).
  failures = results.failures_markdown(results.read_cells(root), 10).splitlines()
  assert failures[2:] == ['- plain-no-norm-20: seed 0 diverged at step 40.']
  write_cell(root, 'plain-nonorm-20-seed1', 0.12, 0.1, 0.1)
  failures = results.failures_markdown(results.read_cells(root), 10).splitlines()
  assert failures[2:] == ['- plain-no-norm-20: seed 0 diverged at step 40; seed 1 stalled '
                          'at 88.00% training error.']
  assert 'within 5 points of chance, 90%' in failures[0]
  assert '- plain-no-norm-20: seed 0 diverged at step 40.\n' in (
      tmp_path / 'report.md').read_text()
  # The paper's errors stand beside its own (BN) nets only.
  table = results.results_markdown(rows, paper_table='cifar10').splitlines()
  assert [line.rsplit('|', 2)[-2].strip() for line in table[2:]] == ['-', '-', '8.75', '-']


def test_variant_cells_train_and_are_reported_end_to_end(fashion_data_dir, tmp_path):
  cfg = tiny_ablation(tmp_path, fashion_data_dir, shortcuts=('none', 'A'), seeds=(0,),
                      steps=2, eval_every=2, variants=('bn',))
  workdir = str(tmp_path / 'sweep')
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.depth_ablation', f'--config={cfg}',
       f'--workdir={workdir}', '--config.variants=nonorm,fixup', '--parallel=2'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert '| 8 | residual (A), Fixup |' in out.stdout
  with open(os.path.join(workdir, 'resnetA-fixup-8-seed0', 'config.json')) as f:
    saved = f.read()
  assert '"branch_scale": "fixup"' in saved and '"norm": "none"' in saved
  assert sorted(d for d in os.listdir(workdir) if d.endswith('seed0')) == [
      'plain-nonorm-8-seed0', 'resnetA-fixup-8-seed0', 'resnetA-nonorm-8-seed0']
