"""The nets of a grid and their sweep cells: a net's id, label and place in tables and
figures, and a cell's name (plain-20-seed0, resnetA-56-seed1, resnetA-fixup-56-seed0).
One owner for each, below both the sweep and the analyses.

A net is its shortcut ('none' is the plain net) and its variant
(resnet_jax/model_variants.py: 'bn', the paper's nets, or one without normalisation);
its id is the shortcut alone for 'bn' ('none', 'A') and 'SHORTCUT+VARIANT' otherwise
('none+tat', 'A+fixup'). The analyses group cells by (depth, id)."""

import dataclasses
import re

from resnet_jax import model_variants


def net_id(shortcut: str, variant: str = 'bn') -> str:
  return shortcut if variant == 'bn' else f'{shortcut}+{variant}'


def of(cell: dict) -> str:
  """The net id of a cell's or a row's dict (one without 'variant' is a BN net)."""
  return net_id(cell['shortcut'], cell.get('variant', 'bn'))


def parts(net: str) -> tuple[str, str]:
  """(shortcut, variant) of a net id."""
  shortcut, _, variant = net.partition('+')
  return shortcut, variant or 'bn'


def is_plain(net: str) -> bool:
  return parts(net)[0] == 'none'


def label(net: str) -> str:
  """'plain', 'residual (A)', 'residual (A), Fixup': a net in tables and legends."""
  shortcut, variant = parts(net)
  out = 'plain' if shortcut == 'none' else f'residual ({shortcut})'
  return out if variant == 'bn' else f'{out}, {model_variants.LABELS[variant]}'


def short_label(depth: int, net: str) -> str:
  """'plain-20', 'ResNet(A)-56', 'ResNet(A)-Fixup-56': a net of one depth in a legend."""
  shortcut, variant = parts(net)
  out = 'plain' if shortcut == 'none' else f'ResNet({shortcut})'
  if variant != 'bn':
    out += '-' + model_variants.LABELS[variant].replace(' ', '-')
  return f'{out}-{depth}'


def order(net: str) -> tuple:
  """The sort key of nets: the plain nets first, then the residual ones by option; within
  each, the BN net first, then the variants in model_variants' order."""
  shortcut, variant = parts(net)
  return shortcut != 'none', shortcut, list(model_variants.VARIANTS).index(variant)


_NAME = re.compile(r'^(plain|resnet(?P<shortcut>\w+?))(-(?P<variant>[a-z]+))?'
                   r'-(?P<depth>\d+)-seed(?P<seed>\d+)$')


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid; its directory is WORKDIR/NAME, as `name` formats and `parse`
  reads it (plain-20-seed0, resnetA-56-seed1, plain-tat-56-seed0: a BN net's name has no
  variant)."""
  depth: int
  shortcut: str
  seed: int
  variant: str = 'bn'

  @property
  def net(self) -> str:
    return net_id(self.shortcut, self.variant)

  @property
  def name(self) -> str:
    kind = 'plain' if self.shortcut == 'none' else f'resnet{self.shortcut}'
    if self.variant != 'bn':
      kind += f'-{self.variant}'
    return f'{kind}-{self.depth}-seed{self.seed}'

  @classmethod
  def parse(cls, name: str) -> 'Cell | None':
    """The cell a directory name names, or None if it names none."""
    m = _NAME.match(name)
    if not m or (m['variant'] or 'bn') not in model_variants.VARIANTS:
      return None
    return cls(int(m['depth']), m['shortcut'] or 'none', int(m['seed']),
               m['variant'] or 'bn')
