"""The set-up: constraints.txt pins every package that pyproject.toml asks for."""

import os
import re
import tomllib

from tests.conftest import REPO


def _name(requirement: str) -> str:
  """A requirement's distribution name, normalised as pip does ('ml_collections' = 'ml-collections')."""
  return re.sub(r'[-_.]+', '-', re.match(r'[A-Za-z0-9_.-]+', requirement).group()).lower()


def test_constraints_pin_every_dependency_of_the_set_up():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  wanted = {_name(r) for r in project['dependencies'] + project['optional-dependencies']['dev']}
  pins = {}
  with open(os.path.join(REPO, 'constraints.txt')) as f:
    lines = f.read().splitlines()
  for line in lines:
    if line.strip() and not line.startswith('#'):
      name, _, version = line.partition('==')
      assert version, f'constraints.txt: {line!r} is not NAME==VERSION'
      pins[_name(name)] = version
  assert wanted - pins.keys() == set(), 'pin these in constraints.txt'
  assert pins['jax'] == pins['jaxlib']  # jax refuses a jaxlib of another version.
