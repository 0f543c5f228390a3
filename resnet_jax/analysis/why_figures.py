"""The why-skips figures of a sweep's report: the landscapes (2-D contours and 1-D curves),
the lesion study and sharpness against depth, plain against residual."""

import os

import numpy as np

from resnet_jax import nets
from resnet_jax.analysis.figures import depth_colors, net_styles, on, save_figure


def _by_group(cells, key):
  """{(depth, net id): [the cells' `key` analyses]}, the first seed first."""
  out = {}
  for c in sorted(cells, key=lambda c: c['seed']):
    if key in c['why']:
      out.setdefault((c['depth'], nets.of(c)), []).append(c['why'][key])
  return out


def contour_levels(grids) -> np.ndarray:
  """Loss levels shared by every contour plot: log-spaced from the lowest loss to ten
  times it (capped at the highest), so that flat and sharp basins read alike."""
  finite = np.concatenate([g[np.isfinite(g)] for g in grids])
  low = max(float(finite.min()), 1e-3)
  high = min(float(finite.max()), 10 * low) if finite.max() > low else low * 2
  return np.geomspace(low, high, 12)


def plot_landscape_2d(cells, path, data=''):
  import matplotlib.pyplot as plt
  groups = _by_group(cells, 'landscape_2d')
  depths = sorted({d for d, _ in groups})
  net_ids = sorted({s for _, s in groups}, key=nets.order)
  grids = {}
  for g, (first, *_) in groups.items():
    n = first['settings']['resolution']
    coords = np.array(first['coords'])
    grids[g] = (coords[:, 0].reshape(n, n), coords[:, 1].reshape(n, n),
                np.array(first['loss'], float).reshape(n, n))
  levels = contour_levels([z for _, _, z in grids.values()])
  fig, axes = plt.subplots(len(depths), len(net_ids), squeeze=False,
                           figsize=(4.2 * len(net_ids), 3.8 * len(depths)))
  for i, depth in enumerate(depths):
    for j, net in enumerate(net_ids):
      ax = axes[i][j]
      if (depth, net) not in grids:
        ax.set_visible(False)
        continue
      a, b, z = grids[(depth, net)]
      cs = ax.contour(a, b, np.clip(z, None, levels[-1] * 10), levels=levels,
                      cmap='viridis')
      ax.clabel(cs, fontsize=6, fmt='%.2g')
      ax.plot([0], [0], 'k+')
      ax.set_title(f'{nets.short_label(depth, net)} (centre loss '
                   f'{z[z.shape[0] // 2, z.shape[1] // 2]:.3g})', fontsize=9)
      ax.set_aspect('equal')
  fig.suptitle('Training loss around the trained weights along two random filter-'
               f'normalised directions (same levels in every plot){on(data)}', fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def plot_landscape_1d(cells, path, data=''):
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for ax, key, xlabel, title in (
      (axes[0], 'landscape_1d', 'a (theta* + a d)', 'along a random filter-normalised '
       'direction'),
      (axes[1], 'landscape_line', 't (theta0 + t (theta* - theta0))',
       'from the initial (t=0) to the trained (t=1) weights')):
    groups = _by_group(cells, key)
    colors = depth_colors({d for d, _ in groups} or {0})
    styles = net_styles(s for _, s in groups)
    for (depth, net), (first, *_) in sorted(groups.items()):
      x = np.array(first['coords'])[:, 0]
      ax.plot(x, first['loss'], linestyle=styles[net][1], color=colors[depth],
              label=nets.short_label(depth, net))
    ax.set_yscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('training loss')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8, ncol=2)
  fig.suptitle(f'1-D slices of the loss (plain dashed, residual solid){on(data)}')
  fig.tight_layout()
  save_figure(fig, path)


def plot_lesion(cells, path, data=''):
  import matplotlib.pyplot as plt
  groups = _by_group(cells, 'lesion')
  colors = depth_colors({d for d, _ in groups})
  styles = net_styles(s for _, s in groups)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for (depth, net), runs in sorted(groups.items()):
    style = dict(linestyle=styles[net][1], color=colors[depth])
    # Left: each deletable block's error, mean over seeds, by its place in the net.
    index = {b: i for i, b in enumerate(runs[0]['blocks'])}
    blocks = [s['block'] for s in runs[0]['single']]
    single = np.mean([[s['error'] for s in r['single']] for r in runs], axis=0)
    axes[0].plot([index[b] + 1 for b in blocks], 100 * single, marker='o', ms=3,
                 label=nets.short_label(depth, net), **style)
    axes[0].axhline(100 * np.mean([r['error'] for r in runs]), lw=0.8, **style)
    # Right: error against the number of deleted blocks, mean over draws and seeds.
    ks = sorted(int(k) for k in runs[0]['random'])
    means = [100 * np.mean([np.mean(r['random'][str(k)]) for r in runs]) for k in ks]
    axes[1].plot([0] + ks, [100 * np.mean([r['error'] for r in runs])] + means,
                 marker='o', ms=3, label=nets.short_label(depth, net), **style)
  axes[0].set_title('one block deleted (line: the whole net)')
  axes[0].set_xlabel('deleted block (index in the net)')
  axes[1].set_title('k random blocks deleted (mean over draws)')
  axes[1].set_xlabel('blocks deleted')
  for ax in axes:
    ax.set_ylabel('test error (%)')
    ax.grid(alpha=0.3)
  if axes[1].get_legend_handles_labels()[0]:
    axes[1].legend(fontsize=8, ncol=2)
  fig.suptitle(f'Lesion study: blocks replaced by the identity at test time{on(data)}')
  fig.tight_layout()
  save_figure(fig, path)


def plot_sharpness(cells, path, data=''):
  import matplotlib.pyplot as plt
  groups = _by_group(cells, 'sharpness')
  styles = net_styles(s for _, s in groups)
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for net in sorted({s for _, s in groups}, key=nets.order):
    depths = sorted(d for d, s in groups if s == net)
    values = [[r['eigenvalue'] for r in groups[(d, net)]] for d in depths]
    color, line = styles[net]
    ax.errorbar(depths, [np.mean(v) for v in values], yerr=[np.std(v) for v in values],
                fmt='o', linestyle=line, color=color, capsize=3,
                label=nets.label(net))
  ax.set_xticks(sorted({d for d, _ in groups}))
  ax.set_yscale('log')
  ax.set_xlabel('depth (layers)')
  ax.set_ylabel('top Hessian eigenvalue')
  ax.set_title(f'Sharpness of the trained nets (mean +- std over seeds){on(data)}')
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


FIGURES = {'landscape_2d.png': (plot_landscape_2d, 'landscape_2d'),
           'landscape_1d.png': (plot_landscape_1d, 'landscape_1d'),
           'lesion.png': (plot_lesion, 'lesion'),
           'sharpness.png': (plot_sharpness, 'sharpness')}


def write_figures(cells, directory: str, data='') -> list[str]:
  """The figures whose analyses some cell has (cells carry them under 'why'); their names."""
  written = []
  for name, (plot, key) in FIGURES.items():
    if any(key in c['why'] for c in cells):
      plot(cells, os.path.join(directory, name), data)
      written.append(name)
  return written
