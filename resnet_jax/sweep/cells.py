"""A sweep's cells: their names, the grid of an ablation config, its shards and the
units (one process's cells) it runs in."""

import ml_collections

from resnet_jax import config_lib
from resnet_jax import model_variants
from resnet_jax import nets
from resnet_jax.nets import Cell
from resnet_jax.shortcuts import SHORTCUTS

def _repeated(items: list) -> list:
  """The items that appear earlier in `items` too, in order."""
  return [v for i, v in enumerate(items) if v in items[:i]]


# Run config keys the grid sets in each cell, with the ablation key that gives them (a
# variant's model keys: where the grid has variants besides 'bn').
GRID_KEYS = {'model.depth': 'depths', 'model.shortcut': 'shortcuts', 'seed': 'seeds'}
VARIANT_KEYS = {f'model.{key}': 'variants' for key in model_variants.MODEL_KEYS}


def grid(ablation) -> list[Cell]:
  """Every cell of the sweep, shallow first (the order of its tables and of --dry_run; the
  sweep starts the deepest first); a config that is not an ablation's, or holds values of
  the wrong type, is refused in one line."""
  if 'model' in ablation and 'depths' not in ablation:
    raise config_lib.ConfigError(
        'This is the config of a single run: the sweep takes configs/ablation.py:PRESET '
        '(a single run: python -m resnet_jax.main).')
  missing = [key for key in ('run_config', 'depths', 'seeds', 'shortcuts', 'exclude',
                             'overrides') if key not in ablation]
  if missing:
    raise config_lib.ConfigError(f'The ablation config has no {missing[0]!r}: start from '
                                 'a preset of configs/ablation.py.')
  values = {}
  # A sweep saved before the variants axis existed ran the paper's (BN) nets.
  variants = ablation.get('variants', ('bn',))
  for key in ('depths', 'seeds', 'shortcuts', 'variants', 'exclude'):
    kind = int if key in ('depths', 'seeds') else str
    given = variants if key == 'variants' else ablation[key]
    wrong = [v for v in given if not isinstance(v, kind) or isinstance(v, bool)]
    if wrong:
      example = dict(depths='20,32', seeds='0,1', shortcuts='none,A', variants='bn,fixup',
                     exclude='none-1202')
      raise config_lib.ConfigError(
          f'config.{key} holds {wrong[0]!r}: give {"names" if kind is str else "integers"}, '
          f'as in --config.{key}={example[key]}.')
    # Names arrive from the command line as one string: ('none,A',) for none,A.
    values[key] = [part.strip() for v in given for part in v.split(',')
                   if part.strip()] if kind is str else list(given)
    repeated = _repeated(values[key]) if key != 'exclude' else []
    if repeated:  # Two runs of one cell would share a directory.
      raise config_lib.ConfigError(f'config.{key} repeats {repeated[0]!r}: give each '
                                   f'value once.')
  for name in values['variants']:
    try:
      model_variants.check_variant(name)
    except ValueError as e:
      raise config_lib.ConfigError(f'config.variants: {e}') from None
  grid_keys = dict(GRID_KEYS, **(VARIANT_KEYS if values['variants'] != ['bn'] else {}))
  for key, flag in grid_keys.items():
    value = ablation.overrides
    for part in key.split('.'):
      value = value.get(part) if isinstance(value, (dict, ml_collections.ConfigDict)) else None
    if value is not None:
      raise config_lib.ConfigError(
          f'config.overrides.{key} would give every cell one {key.split(".")[-1]}: the grid '
          f'sets each cell\'s; give --config.{flag} instead.')
  for name in values['exclude']:
    net, _, depth = name.rpartition('-')
    shortcut, variant = nets.parts(net)
    if shortcut not in SHORTCUTS or variant not in model_variants.VARIANTS or \
        not depth.isdigit():
      raise config_lib.ConfigError(
          f'config.exclude holds {name!r}: name each (net, depth) to leave out as '
          f'SHORTCUT-DEPTH or SHORTCUT+VARIANT-DEPTH, with a shortcut of '
          f'{", ".join(SHORTCUTS)} (the plain net\'s is none), as in '
          f'--config.exclude=none-1202,A+fixup-110.')
  # Each variant where it makes a net: SkipInit and Fixup residual, TAT plain.
  cells = [Cell(d, s, seed, v) for d in values['depths'] for seed in values['seeds']
           for s in values['shortcuts'] for v in values['variants']
           if model_variants.applies(v, s) and f'{nets.net_id(s, v)}-{d}'
           not in values['exclude']]
  if not cells:
    raise config_lib.ConfigError('The grid has no cells: config.depths, config.seeds, '
                                 'config.shortcuts and config.variants each need a value '
                                 'that makes a net (SkipInit and Fixup need a shortcut, '
                                 'TAT the plain net), and config.exclude must leave a '
                                 'cell.')
  return cells


def check_shard(index: int, count: int):
  if count < 1 or not 0 <= index < count:
    raise config_lib.ConfigError(f'--shard_index {index} must be in [0, --num_shards '
                                 f'{count}).')


def shard(cells, index: int, count: int, together: bool = False):
  """Slice `index` of `count`, balanced by depth (a cell's time grows with it): largest
  first onto the least loaded slice. With `together` (seeds vmapped, --vmap_seeds) the
  items are whole (depth, net) groups, one program each, while there are at least as
  many groups as slices; else single cells. It depends on these arguments alone, so
  every machine that resolves --vmap_seeds alike agrees."""
  check_shard(index, count)
  items = units(cells, together)
  if len(items) < count:
    items = [[c] for c in cells]
  loads, mine = [0] * count, set()
  for item in sorted(items, key=lambda u: -unit_cost(u)):  # Stable: ties in grid order.
    least = loads.index(min(loads))
    loads[least] += unit_cost(item)
    if least == index:
      mine.update(item)
  return [c for c in cells if c in mine]  # In grid order: shallow first.


def units(todo: list[Cell], together: bool) -> list[list[Cell]]:
  """The processes to run: one per cell, or one per (depth, net) with its seeds."""
  if not together:
    return [[c] for c in todo]
  groups = {}
  for cell in todo:
    groups.setdefault((cell.depth, cell.net), []).append(cell)
  return list(groups.values())


def unit_cost(unit: list[Cell]) -> int:
  """A unit's cost in layers: a cell's time grows with its depth."""
  return sum(c.depth for c in unit)


def unit_name(unit: list[Cell]) -> str:
  if len(unit) == 1:
    return unit[0].name
  return unit[0].name.rsplit('-seed', 1)[0] + '-seeds' + '+'.join(str(c.seed) for c in unit)


def check_unit(cells: list[Cell]):
  """Refuses --cells that one process cannot train: it trains the seeds of one depth and
  net, each once, with that depth and net's config."""
  if len({(c.depth, c.net) for c in cells}) > 1:
    raise config_lib.ConfigError(
        f'--cells={",".join(c.name for c in cells)} mixes depths or nets: one command '
        'trains the seeds of one depth and net; give the others commands of their own '
        '(--dry_run lists them).')
  repeated = _repeated(cells)
  if repeated:
    raise config_lib.ConfigError(f'--cells names {repeated[0].name} twice: name each cell '
                                 'once.')


def select(cells: list[Cell], names: list[str]) -> list[Cell]:
  """The cells of the grid that `names` (a --cells flag) name: the seeds of one depth and
  net, which one process can train."""
  if not names:  # `--cells=$CELLS` with CELLS unset: not the whole grid.
    raise config_lib.ConfigError('--cells names no cell: name the cells to run (--dry_run '
                                 'lists them), or leave the flag out to run the grid.')
  by_name = {c.name: c for c in cells}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise config_lib.ConfigError(f'No cell named {unknown[0]!r} in this grid: --dry_run '
                                 'lists them.')
  chosen = [by_name[n] for n in names]
  check_unit(chosen)
  return chosen
