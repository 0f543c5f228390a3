"""compare_cells: the McNemar test, the counts, and a real trained cell's predictions."""

import math
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import datasets
from resnet_jax import train
from resnet_jax.analysis import compare
from tests.conftest import REPO
from tests.main_test import small_run_config


def test_mcnemar_p_is_the_exact_two_sided_binomial_tail():
  assert compare.mcnemar_p(0, 0) == 1.0
  assert compare.mcnemar_p(5, 5) == 1.0
  assert compare.mcnemar_p(0, 5) == compare.mcnemar_p(5, 0) == 2 / 32
  # 1 against 9: 2 * (1 + 10) / 1024.
  assert math.isclose(compare.mcnemar_p(1, 9), 22 / 1024)
  assert compare.mcnemar_p(167, 173) > 0.7  # The 20-epoch cells: a tie.
  assert compare.mcnemar_p(100, 200) < 1e-7


def test_compare_counts_where_two_nets_are_wrong():
  labels = np.array([0, 0, 1, 1, 2, 2])
  a = np.array([0, 1, 1, 0, 2, 1])  # Wrong at 1, 3, 5.
  b = np.array([0, 1, 0, 1, 2, 2])  # Wrong at 1, 2.
  result = compare.compare(a, b, labels, num_classes=3)
  assert result['wrong'] == (3, 2)
  assert result['wrong_both'] == 1 and result['wrong_only'] == (2, 1)
  assert result['p_value'] == 1.0
  assert result['pairs'][0] == {(0, 1): 2, (1, 2): 1}
  assert result['pairs'][1] == {(0, 1): 2}
  assert result['class_error'] == ([0.5, 0.5, 0.5], [0.5, 0.5, 0.0])
  md = compare.comparison_markdown(('a', 'b'), result, ('cat', 'dog', 'owl'),
                                         top_pairs=1)
  assert '| wrong | 3 (50.00%) | 2 (33.33%) |' in md
  assert '| cat / dog | 2 | 2 |' in md and 'dog / owl' not in md
  assert '| owl | 50.0 | 0.0 |' in md
  assert 'p = 1, no evidence that the nets differ' in md


def test_a_trained_cell_compared_from_its_checkpoint(fashion_data_dir, tmp_path):
  celldir = str(tmp_path / 'resnetA-8-seed0')
  result = train.train_and_evaluate(small_run_config(fashion_data_dir, 4), celldir)
  pred = compare.predictions(celldir, 'test')
  # The predictions of the restored checkpoint give the run's own test accuracy.
  assert pred['step'] == 4 and len(pred['predicted']) == len(pred['labels']) == 600
  assert math.isclose(float((pred['predicted'] == pred['labels']).mean()),
                      result['test']['accuracy'], abs_tol=1e-6)
  assert pred['class_names'] == datasets.FASHION_MNIST_CLASSES
  # A net against itself: every error shared, none its own.
  md = compare.compare_cells([celldir, celldir], 'validation')
  assert md.startswith('Validation split, 100 images.')
  assert '| wrong for this net only | 0 | 0 |' in md and 'p = 1, no evidence' in md
  assert '| class | error %, resnetA-8-seed0 (step 4) | resnetA-8-seed0 (step 4) |' in md
  assert '| Ankle boot |' in md
  with pytest.raises(compare.CompareError, match='takes two cell directories'):
    compare.compare_cells([celldir])
  # The command line: one line naming the problem, a non-zero exit.
  out = subprocess.run([sys.executable, '-m', 'experiments.compare_cells',
                        f'--cells={celldir},{tmp_path}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path} is not a cell directory (it has no config.json): pass the '
      'directories of two runs.')
