"""The sweep report's figures: training curves, final error against depth (the paper's
Figure 6), and the per-layer and per-block analyses (Figure 7, gradient norms)."""

import numpy as np

from resnet_jax import nets
from resnet_jax import run_dir
from resnet_jax.analysis.results import finished, unfinished


def save_figure(fig, path):
  """Writes `fig` as a PNG through `run_dir.replacing` and frees it."""
  import matplotlib.pyplot as plt
  with run_dir.replacing(path) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)


def net_styles(net_ids) -> dict:
  """{net id: (colour, line style)}: the plain BN net red and dashed, each residual BN
  option a colour and style of its own (A, the paper's, blue and solid), then the nets
  without BatchNorm (nets.py's ids) in colours of their own, dotted where plain, so that
  a sweep over options and variants tells them apart."""
  ids = set(net_ids)
  residual = sorted({n for n in ids if nets.parts(n)[1] == 'bn'} - {'none'},
                    key=lambda s: (s != 'A', s))
  colors = ['tab:blue', 'tab:green', 'tab:purple', 'tab:orange', 'tab:brown']
  lines = ['-', '-.', ':', (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
  styles = {'none': ('tab:red', '--')}
  for i, s in enumerate(residual):
    styles[s] = (colors[i % len(colors)], lines[i % len(lines)])
  others = sorted((n for n in ids if nets.parts(n)[1] != 'bn'), key=nets.order)
  variant_colors = ['tab:olive', 'tab:cyan', 'tab:pink', 'tab:gray', 'black', 'gold']
  for i, n in enumerate(others):
    styles[n] = (variant_colors[i % len(variant_colors)], ':' if nets.is_plain(n) else '-.')
  return styles


def _mean_curve(curves):
  """Averages (step, value) curves over seeds on their common steps."""
  common = sorted(set.intersection(*[set(s for s, _ in c) for c in curves])) if curves else []
  return common, [np.mean([dict(c)[s] for c in curves]) for s in common]


def on(data: str) -> str:
  """The data set for a figure's title: ', fashion_mnist' ('' where unknown)."""
  return f', {data}' if data else ''


def depth_colors(depths):
  import matplotlib.pyplot as plt
  cmap = plt.get_cmap('viridis')
  depths = sorted(depths)
  return {d: cmap(i / max(len(depths) - 1, 1) * 0.9) for i, d in enumerate(depths)}


def plot_training_curves(cells, path, data=''):
  import matplotlib.pyplot as plt
  net_ids = sorted({nets.of(c) for c in cells}, key=nets.order)
  colors = depth_colors({c['depth'] for c in cells})
  fig, axes = plt.subplots(1, len(net_ids), figsize=(6 * len(net_ids), 4.5), sharey=True,
                           squeeze=False)
  for ax, net in zip(axes[0], net_ids):
    for depth in sorted(colors):
      # The table's cells: a diverged seed's curve would cut the mean curve at its step.
      # A (depth, net) none of whose seeds has finished is drawn from its unfinished ones.
      group = [c for c in cells if (c['depth'], nets.of(c)) == (depth, net)
               and c['train_curve']]
      done = [c for c in group if finished(c)]
      group, note = (done, '') if done else ([c for c in group if unfinished(c)],
                                             ' (unfinished)')
      if not group:
        continue
      steps, err = _mean_curve([c['train_curve'] for c in group])
      ax.plot(steps, np.array(err) * 100, '--', color=colors[depth], alpha=0.8)
      steps, err = _mean_curve([c['val_curve'] for c in group if c['val_curve']])
      label = f'{"plain" if nets.is_plain(net) else "ResNet"}-{depth}{note}'
      ax.plot(steps, np.array(err) * 100, '-o', color=colors[depth], lw=2, ms=3, label=label)
    ax.set_title(f'{nets.label(net)} nets')
    ax.set_xlabel('iterations')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(title='solid: held-out, dashed: training')
  axes[0][0].set_ylabel('error (%)')
  fig.suptitle('Training (dashed) and held-out validation (solid) error, mean over seeds'
               + on(data))
  fig.tight_layout()
  save_figure(fig, path)


def plot_depth_vs_error(rows, path, data=''):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  styles = net_styles(nets.of(r) for r in rows)
  for net in sorted({nets.of(r) for r in rows}, key=nets.order):
    rs = sorted([r for r in rows if nets.of(r) == net and r['seeds_done']],
                key=lambda r: r['depth'])
    if not rs:
      continue
    color = styles[net][0]
    d = [r['depth'] for r in rs]
    for metric, style, what in (('train_error', '--', 'training'), ('test_error', '-', 'test')):
      ax.errorbar(d, [100 * r[f'{metric}_mean'] for r in rs],  # One seed: no error bar.
                  yerr=[100 * np.nan_to_num(r[f'{metric}_std']) for r in rs],
                  fmt=style + 'o', color=color,
                  capsize=3, label=f'{nets.label(net)}, {what}',
                  alpha=1.0 if metric == 'test_error' else 0.6)
  depths = sorted({r['depth'] for r in rows if r['seeds_done']})
  if depths:
    ax.set_xticks(depths)  # The grid's depths, not round numbers between them.
  ax.set_xlabel('depth (layers)')
  ax.set_ylabel('final error (%)')
  ax.set_title('Final error against depth (mean +- std over seeds)' + on(data))
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # Nothing finished yet: no legend to draw.
    ax.legend()
  fig.tight_layout()
  save_figure(fig, path)


def analysis_figure(analyses, key_pair, titles, ylabel, path, suptitle, log=False,
                     sort_right=False):
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator
  colors = depth_colors({a['depth'] for a in analyses})
  styles = net_styles(nets.of(a) for a in analyses)
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  for panel, (ax, key, title) in enumerate(zip(axes, key_pair, titles)):
    for a in sorted(analyses, key=lambda a: (a['depth'], nets.order(nets.of(a)))):
      values = np.array(a[key])
      if sort_right and panel == 1:  # By panel: both panels may draw the same key.
        values = np.sort(values)[::-1]
      ax.plot(np.arange(1, len(values) + 1), values, linestyle=styles[nets.of(a)][1],
              color=colors[a['depth']],
              label=nets.short_label(a['depth'], nets.of(a)))
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
