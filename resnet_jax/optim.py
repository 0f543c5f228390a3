"""Optimizers and learning-rate schedules from the config's `optimizer` block.

JAX and Optax are imported where they are used: `check` runs in the sweep's driver,
which imports neither.
"""

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('piecewise', 'cosine', 'constant')
WARMUPS = ('linear', 'constant')
DECAY_ON = ('all', 'kernels')


def check(cfg) -> None:
  """Refuses an `optimizer` block that cannot work, with a ValueError naming the key and
  the fix (config_lib.validate calls it before any work; create_optimizer before use)."""
  def fail(message):
    raise ValueError(message)
  for key, allowed in (('name', OPTIMIZERS), ('schedule', SCHEDULES),
                       ('warmup_kind', WARMUPS), ('weight_decay_on', DECAY_ON)):
    if cfg[key] not in allowed:
      fail(f'Unknown optimizer.{key} {cfg[key]!r}: use one of {", ".join(allowed)}.')
  if not cfg.learning_rate > 0:
    fail(f'optimizer.learning_rate must be positive, got {cfg.learning_rate}.')
  if cfg.weight_decay < 0:
    fail(f'optimizer.weight_decay must be >= 0, got {cfg.weight_decay}.')
  if not 0 <= cfg.momentum < 1:
    fail(f'optimizer.momentum must be in [0, 1), got {cfg.momentum}.')
  if cfg.warmup_steps < 0:
    fail(f'optimizer.warmup_steps must be >= 0, got {cfg.warmup_steps}.')
  if cfg.warmup_steps > 0 and cfg.warmup_kind == 'constant' \
      and not cfg.warmup_learning_rate > 0:
    fail(f'optimizer.warmup_learning_rate must be positive, got '
         f'{cfg.warmup_learning_rate}.')
  bounds = list(cfg.boundaries)
  if not all((isinstance(b, int) and not isinstance(b, bool))
             or (isinstance(b, float) and b.is_integer())
             for b in bounds):  # From the command line a word arrives as a string.
    fail(f'optimizer.boundaries must be steps, as in --config.optimizer.boundaries='
         f'32000,48000, got {tuple(bounds)}.')
  if cfg.schedule == 'piecewise':
    if not cfg.decay_factor > 0:
      fail(f'optimizer.decay_factor must be positive, got {cfg.decay_factor}.')
    if bounds != sorted(set(bounds)):
      fail(f'optimizer.boundaries must be increasing steps, got {tuple(bounds)}.')
    if bounds and bounds[0] <= cfg.warmup_steps:
      fail(f'optimizer.boundaries {tuple(bounds)} must come after the '
           f'{cfg.warmup_steps} warm-up steps (optimizer.warmup_steps).')
  if cfg.name in ('adam', 'adamw'):
    for key in ('b1', 'b2'):
      if not 0 <= cfg[key] < 1:
        fail(f'optimizer.{key} must be in [0, 1), got {cfg[key]}.')
    if not cfg.eps > 0:
      fail(f'optimizer.eps must be positive, got {cfg.eps}.')


def learning_rate_schedule(cfg, total_steps: int):
  """`piecewise`: x decay_factor at `boundaries` (steps); `cosine`: to zero at the end.

  `warmup_steps` > 0 prepends a warm-up: `linear` from 0 to the base rate, or
  `constant` at `warmup_learning_rate` (the paper's 0.01 for ResNet-110). Returns an
  optax schedule.
  """
  import optax
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'piecewise':
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - warmup: cfg.decay_factor for b in cfg.boundaries})
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:  # 'constant'
    main = optax.constant_schedule(lr)
  if warmup <= 0:
    return main
  if cfg.warmup_kind == 'linear':
    head = optax.linear_schedule(0.0, lr, warmup)
  else:  # 'constant'
    head = optax.constant_schedule(cfg.warmup_learning_rate)
  return optax.join_schedules([head, main], [warmup])


def decay_mask(params, on: str):
  """Which parameters weight decay applies to: `kernels` (conv/dense weights) or `all`."""
  import jax
  if on == 'all':
    return jax.tree_util.tree_map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def create_optimizer(cfg, total_steps: int):
  """Returns (optax transformation, schedule); a bad `cfg` raises `check`'s ValueError."""
  import optax
  check(cfg)
  schedule = learning_rate_schedule(cfg, total_steps)
  if cfg.name == 'sgd':
    opt = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == 'adam':
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:  # 'adamw'
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay,
                       mask=lambda p: decay_mask(p, cfg.weight_decay_on)), schedule
  if cfg.weight_decay:
    # Coupled L2 (as PyTorch's SGD and the paper): the decay goes through momentum.
    opt = optax.chain(optax.add_decayed_weights(
        cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.weight_decay_on)), opt)
  return opt, schedule
