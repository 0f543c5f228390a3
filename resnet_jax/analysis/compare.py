"""Where two cells' trained nets disagree on a held-out split: each one's errors, the
images both get wrong, an exact McNemar test of the difference, and the classes
each confuses, from the cells' newest checkpoints (experiments/compare_cells.py)."""

import collections
import math
import os

import jax
import numpy as np

from resnet_jax import input_pipeline
from resnet_jax import run_dir
from resnet_jax.analysis import layers


MAX_CLASS_ROWS = 20  # Per-class errors listed in full up to this many classes.


class CompareError(ValueError):
  """The cells given cannot be compared; the message says why."""


def predictions(celldir: str, split: str = 'test') -> dict:
  """The predicted class of every image of `split` by the cell's newest checkpoint, with
  the true labels, the class names and the checkpoint's step."""
  cell = layers.restore_cell(celldir)
  if not cell.data.sizes[split]:
    raise CompareError(f'{celldir} has no {split} images (its validation_size is 0): '
                       'compare on the test split.')
  state = cell.final_state
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  data = cell.data

  @jax.jit
  def predict(variables, images):
    x = input_pipeline.preprocess(images, None, mean=data.mean, std=data.std)
    return cell.model.apply(variables, x, train=False).argmax(-1)

  predicted, labels = [], []
  for b in data.eval_batches(split):  # In memory or streamed (ImageNet), in split order.
    real = b['mask'] > 0
    predicted.append(np.asarray(predict(variables, b['image']))[real])
    labels.append(np.asarray(b['label'])[real])
  names = data.spec.class_names or tuple(data.builder.info.features['label'].names)
  return {'predicted': np.concatenate(predicted), 'labels': np.concatenate(labels),
          'class_names': names, 'step': cell.step}


def mcnemar_p(only_a: int, only_b: int) -> float:
  """Exact two-sided McNemar p-value: how likely a split of the images exactly one net
  gets wrong at least this uneven is, if either net were as likely to be the one."""
  n, k = only_a + only_b, min(only_a, only_b)
  tail = sum(math.comb(n, i) for i in range(k + 1))
  return min(1.0, 2 * tail / 2**n)


def confused_pairs(predicted: np.ndarray, labels: np.ndarray) -> collections.Counter:
  """Wrong predictions counted by the unordered pair {true class, predicted class}."""
  wrong = predicted != labels
  return collections.Counter(
      (min(t, p), max(t, p)) for t, p in zip(labels[wrong].tolist(), predicted[wrong].tolist()))


def compare(predicted_a: np.ndarray, predicted_b: np.ndarray, labels: np.ndarray,
            num_classes: int) -> dict:
  """Counts of where two nets' predictions on the same images are right and wrong."""
  wrong_a, wrong_b = predicted_a != labels, predicted_b != labels
  only_a, only_b = int((wrong_a & ~wrong_b).sum()), int((wrong_b & ~wrong_a).sum())
  per_class = lambda wrong: [float(wrong[labels == c].mean()) if (labels == c).any()
                             else float('nan') for c in range(num_classes)]
  return {
      'images': len(labels), 'wrong': (int(wrong_a.sum()), int(wrong_b.sum())),
      'wrong_both': int((wrong_a & wrong_b).sum()), 'wrong_only': (only_a, only_b),
      'p_value': mcnemar_p(only_a, only_b),
      'pairs': (confused_pairs(predicted_a, labels), confused_pairs(predicted_b, labels)),
      'class_error': (per_class(wrong_a), per_class(wrong_b)),
  }


def comparison_markdown(names: tuple, result: dict, class_names: tuple,
                        split: str = 'test', top_pairs: int = 8) -> str:
  """The comparison as Markdown tables, nets as columns."""
  n = result['images']
  lines = [f'{split.capitalize()} split, {n:,} images.', '',
           f'| | {names[0]} | {names[1]} |', '|---|---|---|']
  lines += ['| wrong | ' + ' | '.join(f'{w:,} ({100 * w / n:.2f}%)' for w in result['wrong'])
            + ' |',
            '| wrong for this net only | '
            + ' | '.join(f'{w:,}' for w in result['wrong_only']) + ' |', '']
  a, b = result['wrong_only']
  lines += [f'Wrong for both: {result["wrong_both"]:,}. McNemar\'s exact test on the '
            f'{a + b:,} images only one net gets wrong ({a:,} against {b:,}): '
            f'p = {result["p_value"]:.3g}' + (
                ', no evidence that the nets differ on this split.' if result['p_value'] >= 0.05
                else '.'), '']
  pairs_a, pairs_b = result['pairs']
  total = pairs_a + pairs_b
  top = sorted(total, key=lambda p: (-total[p], p))[:top_pairs]
  lines += [f'The {len(top)} class pairs most confused (either way round), of '
            f'{result["wrong"][0]:,} and {result["wrong"][1]:,} errors:', '',
            f'| classes | {names[0]} | {names[1]} |', '|---|---|---|']
  lines += [f'| {class_names[i]} / {class_names[j]} | {pairs_a[(i, j)]} | {pairs_b[(i, j)]} |'
            for i, j in top]
  rows = list(zip(class_names, *result['class_error']))
  if len(rows) > MAX_CLASS_ROWS:  # ImageNet's 1,000: the classes where the nets differ most.
    rows = sorted(rows, key=lambda r: -abs(np.nan_to_num(r[1] - r[2])))[:MAX_CLASS_ROWS]
    lines += ['', f'The {MAX_CLASS_ROWS} of {len(class_names):,} classes whose errors '
              'differ most between the nets:']
  lines += ['', f'| class | error %, {names[0]} | {names[1]} |', '|---|---|---|']
  lines += [f'| {c} | {100 * ea:.1f} | {100 * eb:.1f} |' for c, ea, eb in rows]
  return '\n'.join(lines) + '\n'


def compare_cells(celldirs: list, split: str = 'test', top_pairs: int = 8) -> str:
  """The comparison of two cell directories' newest checkpoints, as Markdown."""
  if len(celldirs) != 2:
    raise CompareError(f'--cells takes two cell directories, comma-separated, not '
                       f'{len(celldirs)}.')
  for c in celldirs:
    if not os.path.isfile(os.path.join(c, run_dir.CONFIG_FILE)):
      raise CompareError(f'{c} is not a cell directory (it has no config.json): pass the '
                         'directories of two runs.')
  preds = []
  for c in celldirs:
    print(f'Predicting the {split} split with {c}...', flush=True)
    preds.append(predictions(c, split))
  if not np.array_equal(preds[0]['labels'], preds[1]['labels']):
    raise CompareError('The two cells hold different images in that split (another data '
                       'set or validation_size): compare cells of one sweep.')
  names = tuple(f'{os.path.basename(os.path.normpath(c))} (step {p["step"]:,})'
                for c, p in zip(celldirs, preds))
  result = compare(preds[0]['predicted'], preds[1]['predicted'], preds[0]['labels'],
                   len(preds[0]['class_names']))
  return comparison_markdown(names, result, preds[0]['class_names'], split, top_pairs)
