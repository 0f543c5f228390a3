"""The shortcut kinds of a residual block, by name (resnet_jax/models/blocks.py builds
them): here, apart from the models, so that the sweep's driver checks a grid's names
without importing JAX."""

SHORTCUTS = ('identity', 'A', 'B', 'C', 'none')


def check_shortcut(kind: str) -> None:
  if kind not in SHORTCUTS:
    raise ValueError(f'Unknown shortcut {kind!r}: use one of {", ".join(SHORTCUTS)}.')
