"""Training and evaluation of one run: `train_and_evaluate(config, workdir)`.

It builds (or restores) the state, trains with a progress line, evaluates on the
validation split at intervals and on the test split at the end, checkpoints with
Orbax, and writes TensorBoard events, `metrics.jsonl` and `config.json` into
`workdir`. Several seeds trained together in one vmapped program (`seeds.py`) run
the same loop, `train`, over a group of these runs.
"""

import contextlib
import os
import time
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import durations
from resnet_jax import metrics_io
from resnet_jax import models
from resnet_jax.native import extension
from resnet_jax import optim
from resnet_jax import run_dir
from resnet_jax import steps
from resnet_jax.run_data import Data
from resnet_jax.signals import StopSignal
from resnet_jax.trainer import Trainer, build_model, to_host

# Bad input: each of these errors says what is wrong and how to fix it, in one sentence.
USER_ERRORS = (config_lib.ConfigError, checkpoints.CheckpointError,
               datasets.DataMissingError, datasets.ValidationSizeError)


class DivergedError(FloatingPointError):
  """The loss became NaN or Inf; `step` is the step at which it was seen."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def say(*args):
  """Prints on process 0 only, so a multi-process run reports once."""
  if jax.process_index() == 0:
    print(*args, flush=True)


def seconds_left(done: int, total: int, first: int, elapsed: float) -> float:
  """Seconds to step `total` at this session's average speed (steps `first` to `done` in
  `elapsed` s): steadier than the last interval's, which one slow minute can swing."""
  return (total - done) * elapsed / max(done - first, 1)


def checkpoint_manager(workdir: str, config):
  return checkpoints.manager(workdir, config.checkpoints_to_keep)


def remember_config(workdir: str, config, allow_change: bool) -> None:
  """Writes `config.json`; refuses a workdir that holds a run of another config.

  With `allow_change`, or when the workdir kept nothing of that run (an attempt that
  failed before its first log line or checkpoint), the old config is kept beside it as
  `config.<time>.json`.
  """
  path = os.path.join(workdir, run_dir.CONFIG_FILE)
  changes = run_dir.config_changes(workdir, config)
  if changes is not None:
    kept = run_dir.holds_results(workdir)
    if changes and kept and not allow_change:
      raise config_lib.ConfigError(
          f'The workdir {workdir} holds a run of another config '
          f'({config_lib.describe_changes(changes)}): use a new '
          f'--workdir, or pass --allow_config_change to continue that run with this one.')
    if changes and jax.process_index() == 0:
      kept_as = os.path.join(workdir, f'config.{time.strftime("%Y%m%d-%H%M%S")}.json')
      os.replace(path, kept_as)
      if not kept:
        say(f'The workdir {workdir} kept no checkpoint or metrics of its earlier attempt: '
            f'starting this config there (the old one is {kept_as}).')
  if jax.process_index() == 0:
    run_dir.write_text(path, config.to_json_best_effort(indent=2))


def _accuracies(final: dict) -> str:
  """'validation accuracy A, test accuracy B' (without the first when none is held out)."""
  return ', '.join(f'{split} accuracy {final[split]["accuracy"]:.4f}'
                   for split in ('validation', 'test') if split in final)


def total_steps(config, data: Data) -> int:
  """The run's length in steps; one that rounds to none is refused."""
  total = config_lib.steps_for(config, data.steps_per_epoch)
  if total <= 0:
    raise config_lib.ConfigError(
        f'num_epochs {config.num_epochs} rounds to 0 steps: an epoch of '
        f'{data.sizes["train"]} training examples is {data.steps_per_epoch} steps of batch '
        f'{config.batch_size}; train for longer (num_epochs, or num_train_steps).')
  return total


def build_trainer(config, data: Data, total: int, num_seeds: int = 1) -> Trainer:
  """The config's model, optimizer and compiled steps for `data`."""
  model = build_model(config, data.spec.num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, total)
  return Trainer(config, model, tx, schedule, data.image_shape, data.mean, data.std,
                 data.spec.num_classes, resident=data.resident(), num_seeds=num_seeds)


@contextlib.contextmanager
def held(config, workdirs: list[str]):
  """Checks `config` and the `workdirs` before any work (bad values leave no workdir
  behind), then holds the workdirs against a second process (process 0 holds them for
  every process of a multi-host run)."""
  config_lib.validate(config, jax.device_count())
  for workdir in workdirs:
    run_dir.check_writable(workdir)
  with run_dir.exclusive(workdirs if jax.process_index() == 0 else []):
    yield


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False,
                       stop: StopSignal | None = None) -> dict:
  """Trains and evaluates one run in `workdir`; returns the final metrics and state.

  A workdir with checkpoints resumes from the newest; one that holds a run of another
  config is refused unless `allow_config_change`; one another process trains in is
  refused. A NaN/Inf loss raises DivergedError. `stop`: a StopSignal the caller has
  entered (else one is, for the training loop).
  """
  with held(config, [workdir]):
    data = Data(config)  # Before any file is written: bad data settings leave nothing.
    total = total_steps(config, data)
    run = Run(config, workdir, allow_config_change)
    result = train(config, data, build_trainer(config, data, total), run, total, stop)
  if 'diverged_at' in result:
    raise DivergedError(result['message'], result['diverged_at'])
  return result


class LoopRun(typing.Protocol):
  """What the training loop (`train`) calls on the run it trains: a `Run` (one seed), or
  a `seeds.SeedGroup` (several seeds' Runs as one, their states, batches, rngs and
  metrics with a leading seed axis; their results as {seed: result})."""

  num_seeds: int  # Seeds trained together: 1 for a Run.
  workdirs: list[str]  # Their directories.
  n_params: int  # Parameters per seed, known once `init_state` ran.
  eval_seconds: float  # This session's evaluations so far (the loop's time excludes them).

  @property
  def active(self) -> bool:
    """Whether any seed still trains (none diverged, or not all)."""

  def init_state(self, trainer: Trainer) -> tuple[Any, int]:
    """The state at initialisation (a list of them for a group), and the newest step saved."""

  def step_rng(self) -> Any:
    """The rng the train step folds each step into."""

  def is_finished(self, step: int) -> bool:
    """Whether training and the final evaluation reached `step` (its run record stands)."""

  def already_trained(self, step: int, state) -> dict:
    """A finished run's logged results and final state, computing nothing."""

  def restore(self, start: int, total: int, state) -> tuple[Any, list]:
    """The state to train on from `start`, and the metrics it saved un-logged."""

  def batch(self, data: Data, trainer: Trainer, step: int) -> Any:
    """The train batch of `step`, on the devices."""

  def log_train(self, done: int, metrics: list, steps_per_s: float) -> list[dict]:
    """Logs the mean of `metrics`; the summaries to print (none for a diverged seed)."""

  def validate(self, trainer: Trainer, state, data: Data, done: int) -> None:
    """Evaluates the held-out split at `done` and logs it."""

  def save(self, done: int, state, metrics: list, force: bool = False) -> None:
    """A checkpoint of `state` at `done`, with the un-logged `metrics`."""

  def stopped(self, done: int, state) -> dict:
    """The result of a run a signal stopped after `done` (its checkpoint saved)."""

  def finish(self, trainer: Trainer, state, data: Data, total: int, record: dict) -> dict:
    """The final evaluation, checkpoint and run record; the final metrics and state."""

  def close(self) -> None:
    """Waits for the checkpoints being written and closes the logs."""


class Run:
  """One run's directory: its config.json, checkpoints, metrics log and result; `train`
  drives it through the calls of `LoopRun`."""

  num_seeds = 1

  def __init__(self, config, workdir: str, allow_config_change: bool = False):
    self.config, self.workdir, self.seed = config, workdir, config.seed
    self.workdirs = [workdir]
    remember_config(workdir, config, allow_config_change)
    self.mngr = checkpoint_manager(workdir, config)
    self.log = None
    self.result = {}
    self.eval_seconds = 0.0  # This session's evaluations, for the run record.

  @property
  def active(self) -> bool:
    """Not diverged."""
    return 'diverged_at' not in self.result

  def init_state(self, trainer: Trainer):
    """The state at initialisation, and the step to resume from (0: none saved)."""
    state = trainer.init_state(steps.seed_rngs(self.seed)[0])
    self.n_params = models.count_params(state.params)
    return state, max(self.mngr.all_steps(), default=0)

  def step_rng(self):
    return jnp.asarray(steps.seed_rngs(self.seed)[1])

  def is_finished(self, step: int) -> bool:
    """Whether the run trained and evaluated to `step` (its run record is written last)."""
    return metrics_io.final_metrics(self.workdir, step) is not None

  def already_trained(self, step: int, state) -> dict:
    """A finished run's logged results and final state: a rerun of the same command
    recompiles, retrains and rewrites nothing."""
    final = metrics_io.final_metrics(self.workdir, step)
    state, _ = checkpoints.restore(self.mngr, step, state)
    self.close()
    final.pop('run')
    say(f'{self.workdir} finished its {step} steps already ({_accuracies(final)}): '
        f'nothing to do. Use a new --workdir to train again.')
    return dict(final, state=state)

  def restore(self, start: int, total: int, state):
    """The state to train on from `start` (a checkpoint's, or `init_from`'s weights) with
    the metrics it saved un-logged; checkpoints past `start` (a group's seed saved before
    a kill) are dropped, and the log resumes at `start`."""
    for later in [s for s in self.mngr.all_steps() if s > start]:
      self.mngr.delete(later)
    pending = []
    if start:
      state, pending = checkpoints.restore(self.mngr, start, state)
    elif self.config.init_from:
      state = checkpoints.load_weights(self.config.init_from, state)
    self.log = metrics_io.MetricsLog(self.workdir, resume_step=start, final_step=total)
    if start == 0:
      self.log.write_hparams(metrics_io.flat_hparams(self.config))
    return state, pending

  def batch(self, data: Data, trainer: Trainer, step: int):
    return trainer.to_device(data.train_batch(step, self.seed), train=True)

  def log_train(self, done: int, metrics: list[dict], steps_per_s: float) -> list[dict]:
    """Writes the mean of `metrics` (the steps since the last summary) and returns it in
    a list; a NaN/Inf loss marks the run diverged instead (an empty list)."""
    if not self.active:
      return []
    summary = {key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]}
    if not np.isfinite(summary['loss']):
      self.mngr.wait_until_finished()
      self.result = {'diverged_at': done, 'message': (
          f'The training loss became {summary["loss"]} by step {done}: lower the '
          f'learning rate; checkpoints up to step {self.mngr.latest_step()} are kept.')}
      return []
    summary.update(steps_per_second=steps_per_s,
                   images_per_second=steps_per_s * self.config.batch_size)
    self.log.write(done, 'train', summary)
    return [summary]

  def validate(self, trainer: Trainer, state, data: Data, done: int, note: str = ''):
    if self.active:
      t = time.perf_counter()
      val = trainer.evaluate(state, data.eval_batches('validation'))
      self.eval_seconds += time.perf_counter() - t
      self.log.write(done, 'validation', val)
      say(f'step {done}: validation loss {val["loss"]:.4f} accuracy '
          f'{val["accuracy"]:.4f}{note}')

  def save(self, done: int, state, metrics: list, force: bool = False):
    """A checkpoint of `state` at `done`, with the un-logged `metrics` (resume is exact)."""
    if self.active and self.mngr.latest_step() != done:
      checkpoints.save(self.mngr, done, state, metrics, force=force)

  def stopped(self, done: int, state) -> dict:
    # A run that diverged before the stop keeps its record: the sweep notes it.
    return {'stopped_at': done, 'state': state} if self.active else self.result

  def finish(self, trainer: Trainer, state, data: Data, total: int, record: dict,
             note: str = '') -> dict:
    """The final evaluation, checkpoint and run record; returns the final metrics."""
    if not self.active:
      self.close()
      return self.result
    final, t_eval = {}, time.perf_counter()
    if data.sizes['validation']:
      final['validation'] = trainer.evaluate(state, data.eval_batches('validation'))
    final['test'] = trainer.evaluate(state, data.eval_batches('test'))
    self.eval_seconds += time.perf_counter() - t_eval
    record = dict(record, eval_seconds=self.eval_seconds)
    for split, values in final.items():
      self.log.write(total, split, values)
    if self.mngr.latest_step() != total:
      checkpoints.save(self.mngr, total, state, force=True)
    self.log.write(total, 'run', record)
    self.close()
    say(f'Final (step {total}{note}): {_accuracies(final)}, test loss '
        f'{final["test"]["loss"]:.4f}; trained in {record["train_seconds"]:.0f} s.')
    self.result = dict(final, state=state)
    return self.result

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()
    if self.log is not None:
      self.log.close()


def _announce(config, data: Data, run: LoopRun, start: int, total: int):
  """Where the run starts from, and what it trains on what."""
  if start:
    say(f'Resumed from the checkpoint of step {start} in {", ".join(run.workdirs)}.')
  elif config.init_from:
    say(f'Starting from the weights of {config.init_from}.')
  arch = ' '.join(f'{key}={config.model[key]}' for key in ('depth', 'shortcut', 'residual')
                  if key in config.model)
  together = f' x {run.num_seeds} seeds in one program (vmap)' if run.num_seeds > 1 else ''
  say(f'{config.model.name} {arch}: {run.n_params:,} parameters; {config.data.name} '
      f'{data.sizes["train"]}/{data.sizes["validation"]}/{data.sizes["test"]}; '
      f'{total} steps of batch {config.batch_size}{together} on {jax.device_count()} '
      f'{jax.devices()[0].platform} device(s).')


def train(config, data: Data, trainer: Trainer, run: LoopRun, total: int,
          stop: StopSignal | None = None) -> dict:
  """The training loop: trains `run` (a Run, or a seeds.SeedGroup) from its newest
  checkpoint to step `total`, then evaluates it; returns its `finish`'s result, or
  its `stopped`'s where a signal stopped it."""
  state, start = run.init_state(trainer)
  if start == total and run.is_finished(start):
    return run.already_trained(start, state)
  state, pending = run.restore(start, total, state)
  _announce(config, data, run, start, total)

  step_rng = run.step_rng()
  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, run.batch(data, trainer, start), step_rng,
                                      *trainer.resident).compile()
  compile_s = time.perf_counter() - t0
  say(f'Compiled the train step in {compile_s:.1f} s.')

  t_train = last_time = time.perf_counter()
  last_step, eval_before = start, run.eval_seconds
  with contextlib.nullcontext(stop) if stop else StopSignal() as stop:
    for step in range(start, total):
      state, metrics = compiled(state, run.batch(data, trainer, step), step_rng,
                                *trainer.resident)
      if pending:
        # At most two steps in flight: the host waits for the previous step while this
        # one runs, so a SIGTERM is acted on within a step or two (not when the queue
        # drains) and batches do not pile up in device memory.
        jax.block_until_ready(pending[-1])
      pending.append(metrics)
      done = step + 1
      if done % config.log_every_steps == 0 or done == total:
        now = time.perf_counter()
        steps_per_s = (done - last_step) / (now - last_time)
        last_time, last_step = now, done
        shown = run.log_train(done, to_host(pending), steps_per_s)
        pending = []
        if shown:
          losses = ' '.join(f'{m["loss"]:.4f}' for m in shown)
          accuracies = ' '.join(f'{m["accuracy"]:.4f}' for m in shown)
          say(f'step {done}/{total} | loss {losses} | acc {accuracies} | '
              f'{steps_per_s:.2f} steps/s | '
              f'{steps_per_s * config.batch_size * run.num_seeds:.0f} img/s | '
              f'ETA {durations.format_clock(seconds_left(done, total, start, now - t_train))}')
        if not run.active:
          break
      if config.eval_every_steps > 0 and done % config.eval_every_steps == 0 \
          and done != total and data.sizes['validation']:
        run.validate(trainer, state, data, done)
      if config.checkpoint_every_steps > 0 and done % config.checkpoint_every_steps == 0:
        run.save(done, state, to_host(pending))
      if stop.should_stop(done - start) and done < total:
        run.save(done, state, to_host(pending), force=True)  # Un-logged metrics too.
        run.close()
        say(f'Stopped by {stop.received} after step {done}: saved a checkpoint; run the '
            f'same command to continue.')
        return run.stopped(done, state)

  train_s = time.perf_counter() - t_train - (run.eval_seconds - eval_before)
  # first_step: a resumed run's train_seconds time only its steps from there on (the
  # evaluations between them are each run's eval_seconds).
  record = {'compile_seconds': compile_s, 'train_seconds': train_s, 'first_step': start,
            'params': run.n_params, 'seeds_together': run.num_seeds}
  if getattr(trainer.model, 'conv_impl', None) == 'onednn':  # Its sums' order (threads).
    record['onednn_threads'] = extension.threads()
  return run.finish(trainer, state, data, total, record)
