"""What a ResNet normalises with, how its residual branches are scaled and which
activation and initialisation it uses, by name, and which combinations make a net
(resnet_jax/models builds them). JAX-free, beside shortcuts.py, so that a sweep's driver
checks a grid's variants without importing JAX.

  norm          'batch': BatchNorm after every convolution (the paper's nets);
                'none': no normalisation, and the convolutions carry biases.
  branch_scale  'none': the branch is added as it is;
                'skipinit': multiplied by a learnable scalar that starts at 0 (SkipInit,
                De & Smith 2020; ReZero, Bachlechner et al. 2020);
                'fixup': Fixup's initialisation (Zhang, Dauphin & Ma 2019): the branch's
                layers He-initialised and scaled by L**(-1/(2m-2)) (L branches of m
                layers), its last layer and the classifier at zero, a scalar multiplier
                (1) and scalar biases (0) before each convolution, activation and the
                classifier, in place of the convolutions' own biases.
  activation    'relu': ReLU with He-initialised kernels;
                'tat': Tailored Activation Transformation (Zhang, Botev & Martens 2022):
                a leaky ReLU transformed by DeepMind's `dks` so that the whole plain net's
                C map sends 0 to 0.9, with delta-orthogonal kernels.
"""

NORMS = ('batch', 'none')
BRANCH_SCALES = ('none', 'skipinit', 'fixup')
ACTIVATIONS = ('relu', 'tat')


def check(shortcut: str, norm: str = 'batch', branch_scale: str = 'none',
          activation: str = 'relu', preact: bool = False,
          zero_init_last_bn: bool = False) -> None:
  """Raises a ValueError naming the key and the fix for a combination that is no net."""
  for key, value, allowed in (('norm', norm, NORMS), ('branch_scale', branch_scale,
                                                      BRANCH_SCALES),
                              ('activation', activation, ACTIVATIONS)):
    if value not in allowed:
      raise ValueError(f'Unknown model.{key} {value!r}: use one of {", ".join(allowed)}.')
  plain = shortcut == 'none'
  if branch_scale != 'none' and plain:
    raise ValueError(f'model.branch_scale {branch_scale!r} scales residual branches, and '
                     f'the plain net (shortcut "none") has none: set branch_scale "none" '
                     f'or give the net a shortcut.')
  if branch_scale == 'fixup' and norm != 'none':
    raise ValueError('model.branch_scale "fixup" replaces normalisation: set model.norm '
                     '"none".')
  if branch_scale == 'fixup' and preact:
    raise ValueError('model.branch_scale "fixup" is built for post-activation blocks, as '
                     'in its paper: set model.preact False.')
  if activation == 'tat' and not (plain and norm == 'none'):
    raise ValueError('model.activation "tat" transforms the activations of a plain net '
                     'without normalisation: set model.shortcut "none" and model.norm '
                     '"none".')
  if zero_init_last_bn and norm != 'batch':
    raise ValueError('model.zero_init_last_bn zero-initialises a BatchNorm scale, and '
                     'model.norm "none" has none: set zero_init_last_bn False.')


# The nets a sweep's grid crosses with depth and shortcut (configs/ablation.py's
# `variants`): each name sets these model keys; 'bn' is the paper's nets.
VARIANTS = {
    'bn': {},
    'nonorm': {'norm': 'none'},
    'skipinit': {'norm': 'none', 'branch_scale': 'skipinit'},
    'fixup': {'norm': 'none', 'branch_scale': 'fixup'},
    'tat': {'norm': 'none', 'activation': 'tat'},
}
LABELS = {'bn': 'BN', 'nonorm': 'no norm', 'skipinit': 'SkipInit', 'fixup': 'Fixup',
          'tat': 'TAT'}
MODEL_KEYS = ('norm', 'branch_scale', 'activation')  # The keys a variant sets.


def check_variant(name: str) -> None:
  if name not in VARIANTS:
    raise ValueError(f'Unknown variant {name!r}: use one of {", ".join(VARIANTS)}.')


def applies(name: str, shortcut: str) -> bool:
  """Whether the variant `name` makes a net with `shortcut` (SkipInit and Fixup need a
  residual net, TAT a plain one)."""
  check_variant(name)
  try:
    check(shortcut, **VARIANTS[name])
  except ValueError:
    return False
  return True
