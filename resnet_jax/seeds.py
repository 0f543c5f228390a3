"""Several seeds of one config trained together: one program, the train step vmapped
over them, each seed an ordinary run in its own workdir.

`train_seeds` wraps the one-seed path of `train.py`: a `SeedGroup` answers the loop's
calls (`train.train`) for its runs, stacking their states on a leading seed axis and
handing each run its own slice. Each seed follows its single-seed trajectory to float
tolerance; a seed whose loss turns NaN is marked diverged and the others go on.
"""

from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import train
from resnet_jax.run_data import Data
from resnet_jax.signals import StopSignal
from resnet_jax.trainer import Trainer, pick_seed, stack_seeds


class SeedGroup:
  """The runs of several seeds, trained by `train.train` as one: the calls of
  `train.LoopRun`, over states with a leading seed axis."""

  def __init__(self, runs: list[train.Run], trainer: Trainer):
    self.runs, self.trainer = runs, trainer
    self.num_seeds = len(runs)
    self.workdirs = [r.workdir for r in runs]

  @property
  def active(self) -> bool:
    return any(r.active for r in self.runs)

  @property
  def eval_seconds(self) -> float:
    return sum(r.eval_seconds for r in self.runs)

  def init_state(self, trainer: Trainer):
    """Each seed's state at initialisation (a list: `restore` stacks them), and the newest
    step every seed has saved (the same one, unless a group was killed between its
    seeds' saves: the later ones are then dropped, to train again)."""
    states = [r.init_state(trainer)[0] for r in self.runs]
    self.n_params = self.runs[0].n_params
    common = set.intersection(*(set(r.mngr.all_steps()) for r in self.runs))
    return states, max(common, default=0)

  def step_rng(self):
    return self.trainer.stack([r.step_rng() for r in self.runs])

  def is_finished(self, step: int) -> bool:
    return all(r.is_finished(step) for r in self.runs)

  def already_trained(self, step: int, states: list) -> dict:
    return {r.seed: r.already_trained(step, s) for r, s in zip(self.runs, states)}

  def restore(self, start: int, total: int, states: list):
    restored = [r.restore(start, total, s) for r, s in zip(self.runs, states)]
    pendings = [p for _, p in restored]
    pending = [stack_seeds([p[j] for p in pendings]) for j in range(len(pendings[0]))]
    return self.trainer.stack([s for s, _ in restored]), pending

  def batch(self, data: Data, trainer: Trainer, step: int):
    return trainer.to_device(stack_seeds([data.train_batch(step, r.seed) for r in self.runs]),
                             train=True)

  def log_train(self, done: int, metrics: list, steps_per_s: float) -> list[dict]:
    shown = []
    for i, run in enumerate(self.runs):
      was_active = run.active
      shown += run.log_train(done, [pick_seed(m, i) for m in metrics], steps_per_s)
      if was_active and not run.active:
        train.say(f'seed {run.seed}: {run.result["message"]}')
    return shown

  def validate(self, trainer: Trainer, state, data: Data, done: int):
    for i, run in enumerate(self.runs):
      if run.active:
        run.validate(trainer, trainer.pick(state, i), data, done, f' (seed {run.seed})')

  def save(self, done: int, state, metrics: list, force: bool = False):
    for i, run in enumerate(self.runs):
      if run.active:
        run.save(done, self.trainer.pick(state, i), [pick_seed(m, i) for m in metrics], force)

  def stopped(self, done: int, state) -> dict:
    return {r.seed: r.stopped(done, self.trainer.pick(state, i) if r.active else None)
            for i, r in enumerate(self.runs)}

  def finish(self, trainer: Trainer, state, data: Data, total: int, record: dict) -> dict:
    return {r.seed: r.finish(trainer, trainer.pick(state, i) if r.active else None, data,
                             total, record, f', seed {r.seed}')
            for i, r in enumerate(self.runs)}

  def close(self):
    for run in self.runs:
      run.close()


def train_seeds(config, workdirs: dict, allow_config_change: bool = False,
                stop: StopSignal | None = None) -> dict:
  """Trains `config` under each seed of `workdirs` ({seed: workdir}); returns {seed: final
  metrics and state, or 'diverged_at' and 'message', or 'stopped_at' and state}. One
  seed is an ordinary `train.train_and_evaluate`; several train in one program, which
  needs an in-memory data set. A workdir that another process is training in is refused.
  """
  if len(workdirs) == 1:
    (seed, workdir), = workdirs.items()
    config = config.copy_and_resolve_references()
    config.seed = seed
    try:
      return {seed: train.train_and_evaluate(config, workdir, allow_config_change, stop)}
    except train.DivergedError as e:
      return {seed: {'diverged_at': e.step, 'message': str(e)}}
  with train.held(config, list(workdirs.values())):
    if not datasets.get_spec(config.data.name).in_memory:
      raise config_lib.ConfigError(f'Several seeds in one program need an in-memory data '
                                   f'set, not the streamed {config.data.name}: run one '
                                   f'seed per process.')
    data = Data(config)  # Before any file is written: bad data settings leave nothing.
    total = train.total_steps(config, data)
    runs = []
    for seed, workdir in workdirs.items():
      c = config.copy_and_resolve_references()
      c.seed = seed
      runs.append(train.Run(c, workdir, allow_config_change))
    trainer = train.build_trainer(config, data, total, num_seeds=len(runs))
    return train.train(config, data, trainer, SeedGroup(runs, trainer), total, stop)
