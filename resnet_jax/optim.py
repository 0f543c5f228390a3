"""Optimizers and learning-rate schedules from the config's `optimizer` block."""

import jax
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('piecewise', 'cosine', 'constant')


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """`piecewise`: x decay_factor at `boundaries` (steps); `cosine`: to zero at the end.

  `warmup_steps` > 0 prepends a warm-up: `linear` from 0 to the base rate, or
  `constant` at `warmup_learning_rate` (the paper's 0.01 for ResNet-110).
  """
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'piecewise':
    main = optax.piecewise_constant_schedule(
        lr, {int(b) - warmup: cfg.decay_factor for b in cfg.boundaries})
  elif cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f'Unknown schedule {cfg.schedule!r}: use one of {", ".join(SCHEDULES)}.')
  if warmup <= 0:
    return main
  if cfg.warmup_kind == 'linear':
    head = optax.linear_schedule(0.0, lr, warmup)
  elif cfg.warmup_kind == 'constant':
    head = optax.constant_schedule(cfg.warmup_learning_rate)
  else:
    raise ValueError(f'Unknown warmup_kind {cfg.warmup_kind!r}: use "linear" or "constant".')
  return optax.join_schedules([head, main], [warmup])


def decay_mask(params, on: str):
  """Which parameters weight decay applies to: `kernels` (conv/dense weights) or `all`."""
  if on == 'all':
    return jax.tree_util.tree_map(lambda _: True, params)
  if on == 'kernels':
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)
  raise ValueError(f'Unknown weight_decay_on {on!r}: use "kernels" or "all".')


def create_optimizer(cfg, total_steps: int):
  """Returns (optax transformation, schedule)."""
  schedule = learning_rate_schedule(cfg, total_steps)
  if cfg.name == 'sgd':
    opt = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  elif cfg.name == 'adam':
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == 'adamw':
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay,
                       mask=lambda p: decay_mask(p, cfg.weight_decay_on)), schedule
  else:
    raise ValueError(f'Unknown optimizer {cfg.name!r}: use one of {", ".join(OPTIMIZERS)}.')
  if cfg.weight_decay:
    # Coupled L2 (as PyTorch's SGD and the paper): the decay goes through momentum.
    opt = optax.chain(optax.add_decayed_weights(
        cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.weight_decay_on)), opt)
  return opt, schedule
