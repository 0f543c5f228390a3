"""The model zoo: `create_model(name, **kwargs)` builds any model a config names."""

import jax.numpy as jnp

from resnet_jax.models.blocks import BasicBlock, BottleneckBlock, SHORTCUTS
from resnet_jax.models.resnet import CifarResNet, ImageNetResNet, ResNet, cifar_stage_sizes
from resnet_jax.models.seed import SeedResNet

MODELS = {
    'cifar_resnet': CifarResNet,
    'imagenet_resnet': ImageNetResNet,
    'seed_resnet': SeedResNet,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def create_model(name: str, **kwargs):
  """Builds the model `name` with its keyword arguments (dtype names as strings)."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}: use one of {", ".join(MODELS)}.')
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      if kwargs[key] not in DTYPES:
        raise ValueError(f'Unknown {key} {kwargs[key]!r}: use one of {", ".join(DTYPES)}.')
      kwargs[key] = DTYPES[kwargs[key]]
  return MODELS[name](**kwargs)


def count_params(params) -> int:
  import jax
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
