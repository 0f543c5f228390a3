"""The train step timed on random batches (no data read): what the benchmark measures
and the sweep's --estimate multiplies by each cell's steps."""

import statistics
import time


def time_train_step(config, image_shape, num_classes: int, seeds: int, steps: int,
                    warmup: int) -> dict:
  """Compiles `config`'s train step (`seeds` seeds vmapped where > 1) and times it on
  random batches of `image_shape`, no data read: init_s, compile_s, step_s (the median
  of `steps` after `warmup`), xla_bytes, and the last state and metrics."""
  import jax
  import numpy as np
  from resnet_jax import optim
  from resnet_jax.trainer import Trainer, build_model

  model = build_model(config, num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, 1000)
  trainer = Trainer(config, model, tx, schedule, image_shape,
                          np.zeros(image_shape[-1], np.float32),
                          np.ones(image_shape[-1], np.float32), num_classes,
                          num_seeds=seeds)
  t = time.perf_counter()
  state = jax.block_until_ready(trainer.stack(
      [trainer.init_state(jax.random.PRNGKey(i)) for i in range(seeds)]))
  init_s = time.perf_counter() - t
  rng = np.random.default_rng(0)
  lead = (seeds,) if seeds > 1 else ()  # Several seeds' batches: a leading seed axis.
  batch = trainer.to_device({
      'image': rng.integers(0, 256, lead + (config.batch_size,) + tuple(image_shape),
                            dtype=np.uint8),
      'label': rng.integers(0, num_classes, lead + (config.batch_size,), dtype=np.int32)},
      train=True)
  key = trainer.stack([jax.random.PRNGKey(1 + i) for i in range(seeds)])
  t = time.perf_counter()
  compiled = trainer.train_step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                 - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return dict(init_s=init_s, compile_s=compile_s, step_s=statistics.median(times),
              xla_bytes=xla_bytes, state=state, metrics=metrics)
