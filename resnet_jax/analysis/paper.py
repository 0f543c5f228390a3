"""He et al. 2016's own errors, put beside a sweep's: Table 6 (CIFAR-10) and Table 2
(ImageNet), by (shortcut, depth). An ablation config's `paper_table` names one."""

from resnet_jax import config_lib

# The errors (%) the paper reports, with the results table's header for them.
TABLES = {
    # Table 6: CIFAR-10 test error of ResNets with option A.
    'cifar10': ('paper test error %', {
        ('A', 20): '8.75', ('A', 32): '7.51', ('A', 44): '7.17', ('A', 56): '6.97',
        ('A', 110): '6.43 (6.61 +- 0.16)', ('A', 1202): '7.93'}),
    # Table 2: ImageNet validation top-1 error, 10-crop testing, plain and option A.
    'imagenet': ('paper val error % (top-1, 10-crop)', {
        ('none', 18): '27.94', ('none', 34): '28.54', ('A', 18): '27.88',
        ('A', 34): '25.03'}),
}

# The data set (its name in resnet_jax.datasets) each table's errors are of.
DATA = {'cifar10': 'cifar10', 'imagenet': 'imagenet2012'}


def table_name(value) -> str:
  """An ablation config's `paper_table`: a name of TABLES, or '' for none."""
  if not value:
    return ''
  if value not in TABLES:
    raise config_lib.ConfigError(
        f'paper_table={value!r} is not a table of the paper here: use one of '
        f'{", ".join(TABLES)}, or \'\' for none.')
  return value


def table_for(ablation, data: str) -> str:
  """The paper's table to put beside the cells' errors: the sweep's `paper_table` where
  the cells trained on that table's data set (or an unknown one), else none."""
  table = table_name(ablation.get('paper_table', '') if ablation else '')
  return '' if table and data and DATA[table] != data else table
