"""The nets of a grid and their sweep cells: a net's label and its place in tables and
figures (by its shortcut: 'none' is the plain net), and a cell's name (plain-20-seed0,
resnetA-56-seed1). One owner for each, below both the sweep and the analyses."""

import dataclasses
import re


def label(shortcut: str) -> str:
  """'plain', or 'residual (A)': a net in tables and legends."""
  return 'plain' if shortcut == 'none' else f'residual ({shortcut})'


def short_label(depth: int, shortcut: str) -> str:
  """'plain-20', 'ResNet(A)-56': a net of one depth in a figure's legend."""
  return f'{"plain" if shortcut == "none" else f"ResNet({shortcut})"}-{depth}'


def order(shortcut: str) -> tuple:
  """The sort key of nets: the plain net first, then the residual ones by option."""
  return shortcut != 'none', shortcut


_NAME = re.compile(r'^(plain|resnet(?P<shortcut>\w+?))-(?P<depth>\d+)-seed(?P<seed>\d+)$')


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid; its directory is WORKDIR/NAME, as `name` formats and `parse`
  reads it (plain-20-seed0, resnetA-56-seed1)."""
  depth: int
  shortcut: str
  seed: int

  @property
  def name(self) -> str:
    kind = 'plain' if self.shortcut == 'none' else f'resnet{self.shortcut}'
    return f'{kind}-{self.depth}-seed{self.seed}'

  @classmethod
  def parse(cls, name: str) -> 'Cell | None':
    """The cell a directory name names, or None if it names none."""
    m = _NAME.match(name)
    return m and cls(int(m['depth']), m['shortcut'] or 'none', int(m['seed']))
