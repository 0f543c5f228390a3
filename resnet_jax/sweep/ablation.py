"""A sweep's config (configs/ablation.py): its cells' run configs, the overrides it sets,
and the checks of a sweep directory against it."""

import importlib.util
import json
import os

import ml_collections
from ml_collections import config_dict

from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import model_variants
from resnet_jax import run_dir
from resnet_jax.analysis import paper
from resnet_jax.sweep.cells import Cell


def sweep_overrides(values: dict) -> ml_collections.ConfigDict:
  """A sweep's changes to its cells' run config: `values`, and an unset placeholder for
  every other key of base_config(), so that --config.overrides.KEY=VALUE can change any
  key a run reads (configs/ablation.py); unset ones change nothing."""
  def fill(base, given, prefix):
    unknown = sorted(set(given) - set(base))
    if unknown:
      raise ValueError(f'overrides.{prefix}{unknown[0]} is not a key of a run config.')
    out = ml_collections.ConfigDict()
    for key, default in base.items():
      if isinstance(default, ml_collections.ConfigDict):
        out[key] = fill(default, given.get(key, {}), f'{prefix}{key}.')
      else:
        out[key] = given[key] if key in given else config_dict.placeholder(
            type(default))
    return out
  return fill(config_lib.base_config(), values, '')




def is_ablation(config) -> bool:
  """Whether `config` is a sweep's (configs/ablation.py), not a single run's."""
  return 'depths' in config and 'run_config' in config


def refuse_as_run(config, workdir: str) -> None:
  """Refuses a sweep's config or a sweep's directory given to a single run: the sweep's
  cells would mix with the run's files, and each take the other's for its own."""
  if is_ablation(config):
    raise config_lib.ConfigError(
        'This is a depth-ablation config (configs/ablation.py): run it with '
        'python -m experiments.depth_ablation --config=... --workdir=....')
  if os.path.isfile(os.path.join(workdir, run_dir.SWEEP_RECORD)):
    raise config_lib.ConfigError(
        f'{workdir} is a depth-ablation sweep\'s directory (it has an '
        f'{run_dir.SWEEP_RECORD}): give the run a directory of its own.')


def refuse_run_dir(workdir: str) -> None:
  """Refuses a single run's directory given to a sweep."""
  if os.path.isfile(os.path.join(workdir, run_dir.CONFIG_FILE)):
    raise config_lib.ConfigError(
        f'{workdir} is a single run\'s directory (it has a config.json), not a sweep\'s: give '
        'the sweep a directory of its own, such as runs/ablation.')


def load_config_file(name: str):
  path = name if os.path.isabs(name) else os.path.join(config_lib.CONFIG_DIR, name)
  spec = importlib.util.spec_from_file_location(f'resnet_jax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def merge(config, overrides):
  """Recursively sets `overrides` into `config`, but for unset (None) placeholders;
  unknown keys are an error."""
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in config:
      raise config_lib.ConfigError(f'The ablation override {key!r} is not a run config key.')
    if isinstance(value, ml_collections.ConfigDict):
      merge(config[key], value)
    else:
      config[key] = value
  return config


def cell_config(ablation, cell: Cell):
  """The run config of one cell: run_config called for its depth and shortcut, overridden,
  with its variant's model keys (resnet_jax/model_variants.py)."""
  arg = f'depth={cell.depth},' + ('plain' if cell.shortcut == 'none'
                                  else f'shortcut={cell.shortcut}')
  try:
    config = load_config_file(ablation.run_config).get_config(arg)
  except ValueError as e:  # The run config's own one-line refusal of this cell's argument.
    raise config_lib.ConfigError(f'{cell.name}: {ablation.run_config}: {e}') from e
  merge(config, ablation.overrides)
  if cell.variant != 'bn':  # A BN cell keeps what the overrides set (cells.grid says when).
    config.model.update(model_variants.VARIANTS[cell.variant])
  config.seed = cell.seed
  return config


def cell_steps(config) -> int:
  """The steps of a cell's run, from its config and its data set's known size (no data
  read)."""
  spec = datasets.get_spec(config.data.name)
  held_out = (spec.validation_size if config.data.validation_size < 0
              else config.data.validation_size)
  return config_lib.steps_for(config, (spec.train_examples - held_out) // config.batch_size)


def _set_only(tree: dict) -> dict:
  """`tree` without its unset (None) leaves, nor the sub-trees left empty."""
  out = {}
  for key, value in tree.items():
    value = _set_only(value) if isinstance(value, dict) else value
    if value not in (None, {}):
      out[key] = value
  return out


def saved_ablation(ablation, data_name: str) -> ml_collections.ConfigDict:
  """The sweep's config as ablation.json keeps it for the report: the overrides it sets.
  Says so where the report will leave out the paper's errors, of another data set."""
  saved = json.loads(ablation.to_json_best_effort())
  saved['overrides'] = _set_only(saved['overrides'])
  table = paper.table_name(saved.get('paper_table', ''))
  if table and not paper.table_for(saved, data_name):
    print(f'The cells train on {data_name}: the report leaves out the paper\'s errors, which '
          f'are of {paper.DATA[table]}.', flush=True)
  return ml_collections.ConfigDict(saved)


def check_cell_configs(ablation, cells: list[Cell], workdir: str):
  """Refuses a sweep directory whose cells ran with other configs: the sweep would skip
  them as finished and report another experiment under this one's name."""
  for cell in cells:
    celldir = os.path.join(workdir, cell.name)
    if not run_dir.holds_results(celldir):
      continue  # An attempt that kept nothing: the cell's run replaces its config.
    changes = run_dir.config_changes(celldir, cell_config(ablation, cell))
    if changes:
      raise config_lib.ConfigError(
          f'{os.path.join(workdir, cell.name)} holds a run of another config '
          f'({config_lib.describe_changes(changes)}): '
          f'give this sweep a new --workdir (or move that cell away to run it again).')
