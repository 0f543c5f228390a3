"""The why-skips analyses a cell keeps (CELL/why/*.json): where they live, reading them,
and the report's summary of them."""

import json
import os

import numpy as np

from resnet_jax import nets

WHY = 'why'  # The folder of a cell that holds its analyses.
NAMES = ('landscape_2d', 'landscape_1d', 'landscape_line', 'profiles', 'lesion',
         'sharpness')


def path(celldir: str, name: str) -> str:
  return os.path.join(celldir, WHY, f'{name}.json')


def load(file: str, settings: dict | None = None) -> dict | None:
  """A saved analysis (None: missing, unreadable, or made with other `settings`)."""
  try:
    with open(file) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  if settings is not None and saved.get('settings') != settings:
    return None
  return saved


def read(celldir: str) -> dict:
  """The analyses kept in a cell's why/ folder: {name: saved dict}, complete ones only."""
  out = {}
  for name in NAMES:
    saved = load(path(celldir, name))
    if saved and None not in saved.get('loss', ()):  # Landscapes and profiles: whole.
      out[name] = saved
  return out


def summary_markdown(cells: list[dict], label) -> str:
  """A table per (depth, net), means over the seeds analysed: the lesion study's test
  error whole, and with one block deleted (mean and worst over the blocks), sharpness,
  and the landscape's loss at its centre and its highest on the 2-D grid."""
  groups = {}
  for c in cells:
    if c['why']:
      groups.setdefault((c['depth'], nets.of(c)), []).append(c['why'])
  if not groups:
    return ''
  lines = ['| net | test error % (lesion images) | one block deleted: mean % | worst % | '
           'sharpness | 2-D landscape: centre loss | highest loss |', '|' + '---|' * 7]
  mean = lambda xs: float(np.mean(xs)) if xs else np.nan
  fmt = lambda x, f: '-' if not np.isfinite(x) else format(x, f)
  for (depth, net), whys in sorted(groups.items(),
                                   key=lambda g: (g[0][0], nets.order(g[0][1]))):
    lesions = [w['lesion'] for w in whys if 'lesion' in w]
    singles = [[s['error'] for s in l['single']] for l in lesions if l['single']]
    grids = [np.array(w['landscape_2d']['loss'], float) for w in whys
             if 'landscape_2d' in w]
    row = [label(depth, net),
           fmt(100 * mean([l['error'] for l in lesions]), '.2f'),
           fmt(100 * mean([np.mean(s) for s in singles]), '.2f'),
           fmt(100 * mean([np.max(s) for s in singles]), '.2f'),
           fmt(mean([w['sharpness']['eigenvalue'] for w in whys if 'sharpness' in w]), '.3g'),
           fmt(mean([g[len(g) // 2] for g in grids]), '.3g'),
           fmt(mean([np.max(g) for g in grids]), '.3g')]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def profiles_markdown(cells: list[dict], label) -> str:
  """A row per cell analysed (each seed on its own): the median loss over the profiles'
  random directions at each distance, with the lowest and highest (a single direction
  can differ a hundredfold, so no one direction speaks for a net)."""
  rows = [c for c in cells if c['why'] and 'profiles' in c['why']]
  if not rows:
    return ''
  distances = rows[0]['why']['profiles']['settings']['distances']
  n = rows[0]['why']['profiles']['settings']['directions']
  lines = ['| net | seed | ' + ' | '.join(
      f'loss at {t:g}: median [lowest, highest] of {n} directions' for t in distances)
           + ' |', '|' + '---|' * (2 + len(distances))]
  for c in sorted(rows, key=lambda c: (c['depth'], nets.order(nets.of(c)), c['seed'])):
    saved = c['why']['profiles']
    loss = np.reshape(saved['loss'], (saved['settings']['directions'], -1))
    cols = [f'{np.median(x):.3g} [{np.min(x):.3g}, {np.max(x):.3g}]' for x in loss.T]
    lines.append(f'| {label(c["depth"], nets.of(c))} | {c["seed"]} | '
                 + ' | '.join(cols) + ' |')
  return '\n'.join(lines) + '\n'
