"""Training and evaluation: a pure, jit-compiled step sharded over every device.

`train_and_evaluate(config, workdir)` builds (or restores) the state, trains with
a progress line, evaluates on the validation split at intervals and on the test
split at the end, checkpoints with Orbax, and writes TensorBoard events,
`metrics.jsonl` and `config.json` into `workdir`.
"""

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any

from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
from resnet_jax import checkpoints
from resnet_jax import compile_options
from resnet_jax import config_lib
from resnet_jax import datasets
from resnet_jax import input_pipeline
from resnet_jax import metrics_io
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import run_dir
from resnet_jax import streaming_input

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class DivergedError(FloatingPointError):
  """The loss became NaN or Inf; `step` is the step at which it was seen."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class TrainState(train_state.TrainState):
  batch_stats: Any


def make_mesh() -> Mesh:
  """A one-axis mesh of every device of every process: the batch is split on `data`."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def build_model(config, num_classes: int):
  """The config's model. `model.conv_impl='fast'` takes XLA's own gradients where the
  batch is split over several devices: split across them, fast_conv's batch chunks ran
  2.4x slower on 4 CPU devices and could deadlock XLA:CPU's collectives."""
  kwargs = config.model.to_dict()
  if kwargs.get('conv_impl') == 'fast' and jax.device_count() > 1:
    kwargs['conv_impl'] = 'xla'
  return models.create_model(num_classes=num_classes, **kwargs)


def seed_rngs(seed: int):
  """The keys a run of `seed` initialises its state from and draws its steps' keys from."""
  return jax.random.split(jax.random.PRNGKey(seed))


def create_train_state(rng, model, tx, image_shape) -> TrainState:
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}))


def classification_metrics(logits, labels, num_classes: int, weights=None):
  """Summed loss, top-1 (and top-5 where classes > 10) and the example count."""
  weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  out = {'loss': jnp.sum(loss * weights),
         'accuracy': jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
         'count': jnp.sum(weights)}
  if num_classes > 10:
    top5 = jnp.any(jax.lax.top_k(logits, 5)[1] == labels[:, None], axis=-1)
    out['top5_accuracy'] = jnp.sum(top5 * weights)
  return out


def train_step(state: TrainState, batch, rng, *, schedule, data_cfg, mean, std,
               num_classes: int):
  """One SGD step on `batch`: (state, batch, rng) -> (state, metrics). Pure."""
  rng = jax.random.fold_in(rng, state.step)
  kind = 'none' if data_cfg.augment in streaming_input.STREAM_AUGMENTATIONS \
      else data_cfg.augment  # Streamed data arrive augmented from tf.data.
  images = input_pipeline.preprocess(batch['image'], rng, mean=mean, std=std,
                                     kind=kind, pad=data_cfg.pad)
  labels = batch['label']

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates)

  (_, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(
      grads=grads, batch_stats=updates.get('batch_stats', state.batch_stats))
  sums = classification_metrics(logits, labels, num_classes)
  count = sums.pop('count')
  metrics = {k: v / count for k, v in sums.items()}
  metrics.update(learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(new_state.params))
  return new_state, metrics


def gather_train_step(state: TrainState, batch, rng, images, labels, **kwargs):
  """`train_step` on the examples `batch['index']` of a split held in device memory."""
  batch = {'image': jnp.take(images, batch['index'], axis=0),
           'label': jnp.take(labels, batch['index'], axis=0)}
  return train_step(state, batch, rng, **kwargs)


def eval_step(state: TrainState, batch, *, mean, std, num_classes: int):
  """Summed metrics of one padded eval batch (`mask` marks real examples)."""
  images = input_pipeline.preprocess(batch['image'], None, mean=mean, std=std)
  logits = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                          images, train=False)
  return classification_metrics(logits, batch['label'], num_classes, batch['mask'])


def to_host(tree):
  """Replicated device values as numpy, on every process (each holds a full copy)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), tree)


def steps_for(config, steps_per_epoch: int) -> int:
  """The run's length in steps: `num_train_steps` if positive, else `num_epochs`."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(round(config.num_epochs * steps_per_epoch))


class Trainer:
  """Holds the compiled steps and shardings of one run, or of `num_seeds` runs at once.

  With `resident` (a split's images and labels) the split is copied to every device
  once and the train step takes `{'index': ...}` batches, gathering on the device.
  With `num_seeds` > 1 the train step is vmapped: states, batches and rngs carry a
  leading seed axis (`stack` and `pick` convert).
  """

  def __init__(self, config, model, tx, schedule, image_shape, mean, std, num_classes,
               resident=None, num_seeds: int = 1):
    self.mesh = make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.model, self.image_shape = model, image_shape
    self.tx, self.num_seeds = tx, num_seeds
    kwargs = dict(schedule=schedule, data_cfg=config.data, mean=mean, std=std,
                  num_classes=num_classes)
    self.resident = ()
    if resident is not None:
      self.resident = tuple(
          jax.make_array_from_callback(a.shape, self.replicated, lambda i, a=a: a[i])
          for a in resident)
    step = functools.partial(gather_train_step if self.resident else train_step, **kwargs)
    self.batch_sharding = self.data_sharding
    if num_seeds > 1:
      step = jax.vmap(step, in_axes=(0, 0, 0) + (None,) * len(self.resident))
      self.batch_sharding = NamedSharding(self.mesh, P(None, 'data'))
    self.compiler_options = options = compile_options.for_config(config)
    self.train_step = jax.jit(
        step, compiler_options=options,
        in_shardings=(self.replicated, self.batch_sharding, self.replicated)
        + (self.replicated,) * len(self.resident),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(eval_step, mean=mean, std=std, num_classes=num_classes),
        compiler_options=options,
        in_shardings=(self.replicated, self.data_sharding), out_shardings=self.replicated)
    # Initialisation runs once a run: compiled with few optimisations, it compiles fast.
    self._init = jax.jit(functools.partial(create_train_state, model=model, tx=tx,
                                           image_shape=image_shape),
                         compiler_options=compile_options.run_once(options),
                         out_shardings=self.replicated)
    self._stack = jax.jit(lambda *trees: jax.tree_util.tree_map(
        lambda *x: jnp.stack(x), *trees), out_shardings=self.replicated)
    self._pick = jax.jit(lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree),
                         out_shardings=self.replicated)

  def stack(self, trees: list):
    """Per-seed trees (states, rngs) as one tree with a leading seed axis."""
    return trees[0] if self.num_seeds == 1 else self._stack(*trees)

  def pick(self, tree, i: int):
    """Seed `i`'s part of a stacked tree."""
    return tree if self.num_seeds == 1 else self._pick(tree, i)

  def init_state(self, rng) -> TrainState:
    return self._init(rng)

  def to_device(self, local_batch, train: bool = False):
    """This process's part of a batch as a global array (a train batch of several
    seeds has a leading seed axis)."""
    sharding = self.batch_sharding if train else self.data_sharding
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

  def evaluate(self, state, batches) -> dict:
    totals = None
    for batch in batches:
      sums = self.eval_step(state, self.to_device(batch))
      totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = to_host(totals)
    count = totals.pop('count')
    return {k: float(v / count) for k, v in totals.items()}


class Data:
  """A run's data: the batch of any training step, and eval batches of each split."""

  def __init__(self, config):
    cfg = config.data
    self.spec = datasets.get_spec(cfg.name)
    self.builder = datasets.get_builder(cfg.name, cfg.data_dir or None,
                                        cfg.manual_dir or None, cfg.fashion_mnist_dir)
    val = self.spec.validation_size if cfg.validation_size < 0 else cfg.validation_size
    self.batch_size, self.eval_batch_size = config.batch_size, config.eval_batch_size
    self.seed, self.image_size = config.seed, cfg.image_size
    self.on_device = bool(cfg.on_device) and self.spec.in_memory
    self.pi, self.pc = jax.process_index(), jax.process_count()
    if self.spec.in_memory:
      self.splits = datasets.load_arrays(cfg.name, self.builder, val)
      self.sizes = {k: len(v) for k, v in self.splits.items()}
      self._check_batch_size(config.batch_size, val)
      self._batches = {}
      self.steps_per_epoch = self.batches(config.seed).steps_per_epoch
      self.image_shape = self.splits['train'].images.shape[1:]
      self.mean, self.std = input_pipeline.channel_stats(self.splits['train'].images)
    else:
      self.split_names = dict(zip(('train', 'validation'),
                                  streaming_input.train_split_names(self.spec, val)),
                              test=self.spec.test_split)
      n_train = self.builder.info.splits['train'].num_examples
      datasets.check_validation_size(cfg.name, val, n_train)
      self.sizes = {'train': n_train - val, 'validation': val,
                    'test': self.builder.info.splits[self.spec.test_split].num_examples}
      self._check_batch_size(config.batch_size, val)
      self.steps_per_epoch = self.sizes['train'] // config.batch_size
      self.image_shape = (cfg.image_size, cfg.image_size, self.spec.image_shape[-1])
      self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
      self._stream, self._next_step = None, None
    if cfg.normalize == 'unit':  # config_lib.validate has refused any other value.
      self.mean = np.zeros_like(self.mean)
      self.std = np.ones_like(self.std)

  def _check_batch_size(self, batch_size: int, held_out: int):
    if batch_size > self.sizes['train']:
      raise config_lib.ConfigError(
          f'batch_size {batch_size} is larger than the {self.sizes["train"]} training '
          f'examples of {self.spec.tfds_name} ({held_out} held out for validation): lower '
          f'batch_size (or data.validation_size).')

  def resident(self):
    """The arrays to keep in device memory, or None when batches come from the host."""
    if not self.on_device:
      return None
    return self.splits['train'].images, self.splits['train'].labels

  def batches(self, seed: int) -> input_pipeline.TrainBatches:
    if seed not in self._batches:
      self._batches[seed] = input_pipeline.TrainBatches(
          self.splits['train'], self.batch_size, seed, self.pi, self.pc)
    return self._batches[seed]

  def train_batch(self, step: int, seed: int | None = None):
    """This process's part of training batch `step` (of run `seed`, default the config's)."""
    seed = self.seed if seed is None else seed
    if self.on_device:
      return {'index': self.batches(seed).indices(step)}
    if self.spec.in_memory:
      return self.batches(seed)(step)
    if self._stream is None or step != self._next_step:
      self._stream = streaming_input.train_iterator(
          self.builder, self.split_names['train'], self.batch_size // self.pc,
          self.image_size, self.seed, step, self.pi, self.pc)
    self._next_step = step + 1
    return next(self._stream)

  def held_out(self, n: int):
    """The first `n` images (uint8, as stored) and labels of the validation split, or of
    the test split where none is held out: the layer analysis's probe images."""
    split = 'validation' if self.sizes['validation'] else 'test'
    if self.spec.in_memory:
      return self.splits[split].images[:n], self.splits[split].labels[:n]
    images, labels = [], []
    for batch in self.eval_batches(split):
      real = batch['mask'] > 0
      images.append(batch['image'][real])
      labels.append(batch['label'][real])
      if sum(map(len, labels)) >= n:
        break
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]

  def eval_batches(self, split: str):
    if self.spec.in_memory:
      return input_pipeline.eval_batches(self.splits[split], self.eval_batch_size,
                                         self.pi, self.pc)
    return streaming_input.eval_iterator(self.builder, self.split_names[split],
                                         self.eval_batch_size // self.pc,
                                         self.image_size, self.pi, self.pc)


class StopSignal:
  """Notes SIGTERM (how a preemptible VM is told it will stop) and a first Ctrl-C
  (SIGINT) instead of dying on them: the run saves a checkpoint and stops.

  With several processes, JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on any of them and names one step
  at which every process stops together; a Ctrl-C there is handed to it as SIGTERM,
  since one process stopping alone would leave the others waiting for it (the command
  line enters it before the data are read and the steps compiled, so that this holds
  from the start).
  """

  def __init__(self):
    self.received, self._old, self._interrupted = None, {}, False
    self.multi_process = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      if not self.multi_process:
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      # Python's own Ctrl-C handler only: a sweep's worker ignores SIGINT (its driver
      # stops it with SIGTERM).
      if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:  # A second Ctrl-C interrupts at once.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      self._interrupted = True
      if self.multi_process:  # To JAX's preemption service, which tells every process.
        os.write(2, b'Ctrl-C: every process of the run stops at its next step, with a '
                 b'checkpoint (Ctrl-C again stops this one at once).\n')
        os.kill(os.getpid(), signal.SIGTERM)
        return
    self.received = signal.Signals(signum).name

  def should_stop(self, steps_run: int) -> bool:
    """Called after every step, on every process, with the steps run in this session.

    (Not the global step: the service sets the stop one step past the counts the
    processes last gave it, 0 before any, so a notice that comes before a resumed
    run's first step would otherwise name a step already behind it, never reached.)
    """
    if self.multi_process and multihost_utils.reached_preemption_sync_point(steps_run):
      self.received = 'SIGINT' if self._interrupted else 'SIGTERM'
    return self.received is not None

  def __exit__(self, *exc):
    for signum, old in self._old.items():
      signal.signal(signum, old)


# Bad input: each of these errors says what is wrong and how to fix it, in one sentence.
USER_ERRORS = (config_lib.ConfigError, checkpoints.CheckpointError,
               datasets.DataMissingError, datasets.ValidationSizeError)


def say(*args):
  """Prints on process 0 only, so a multi-process run reports once."""
  if jax.process_index() == 0:
    print(*args, flush=True)


def seconds_left(done: int, total: int, first: int, elapsed: float) -> float:
  """Seconds to step `total` at this session's average speed (steps `first` to `done` in
  `elapsed` s): steadier than the last interval's, which one slow minute can swing."""
  return (total - done) * elapsed / max(done - first, 1)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def checkpoint_manager(workdir: str, config):
  return checkpoints.manager(workdir, config.checkpoints_to_keep)


def remember_config(workdir: str, config, allow_change: bool) -> None:
  """Writes `config.json`; refuses a workdir that holds a run of another config.

  With `allow_change`, or when the workdir kept nothing of that run (an attempt that
  failed before its first log line or checkpoint), the old config is kept beside it as
  `config.<time>.json`.
  """
  path = os.path.join(workdir, 'config.json')
  new = config.to_json_best_effort(indent=2)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    try:
      changes = config_lib.config_changes(json.loads(old), json.loads(new))
    except ValueError:
      changes = ['config.json: unreadable']
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
    run_dir.write_text(path, new)


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False,
                       stop: StopSignal | None = None) -> dict:
  """Trains and evaluates one run in `workdir`; returns the final metrics.

  A workdir with checkpoints resumes from the newest; one that holds a run of another
  config is refused unless `allow_config_change`. A NaN/Inf loss raises DivergedError.
  `stop`: a StopSignal the caller has entered (else one is, for the training loop).
  """
  result = train_seeds(config, {config.seed: workdir}, allow_config_change,
                       stop)[config.seed]
  if 'diverged_at' in result:
    raise DivergedError(result['message'], result['diverged_at'])
  return result


class SeedRun:
  """One seed's run in a group trained together: its config, workdir, log, checkpoints."""

  def __init__(self, config, workdir: str, allow_config_change: bool):
    self.config, self.workdir = config, workdir
    remember_config(workdir, config, allow_config_change)
    self.mngr = checkpoint_manager(workdir, config)
    self.log = None
    self.result = {}

  @property
  def active(self) -> bool:
    return 'diverged_at' not in self.result

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()
    if self.log is not None:
      self.log.close()


def _pick(tree, i: int, k: int):
  """Run `i` of a group of `k`: leaves carry a leading seed axis only when k > 1."""
  return tree if k == 1 else jax.tree_util.tree_map(lambda x: x[i], tree)


def _stack(trees: list):
  """Host trees (batches, restored metrics) stacked on a new leading seed axis."""
  if len(trees) == 1:
    return trees[0]
  return jax.tree_util.tree_map(lambda *x: np.stack(x), *trees)


def train_seeds(config, workdirs: dict, allow_config_change: bool = False,
                stop: StopSignal | None = None) -> dict:
  """Trains `config` under each seed of `workdirs` ({seed: workdir}) in one program.

  With several seeds the train step is `jax.vmap`ped over them: one compilation, and
  on accelerators one device program for all. Every seed's run is an ordinary run in
  its own workdir (config, metrics, checkpoints) that follows its single-seed
  trajectory to float tolerance. A seed whose loss turns NaN is marked diverged and
  the others go on. Returns {seed: final metrics, or 'diverged_at' and 'message'}.
  A workdir that another process is training in is refused.
  """
  config_lib.validate(config, jax.device_count())  # Bad values leave no workdir behind.
  for workdir in workdirs.values():
    run_dir.check_kind(workdir, sweep=False)
    run_dir.check_writable(workdir)
  # Process 0 holds the workdirs for all the processes of a multi-host run.
  with run_dir.exclusive(list(workdirs.values()) if jax.process_index() == 0 else []):
    return _train_seeds(config, workdirs, allow_config_change, stop)


def _accuracies(final: dict) -> str:
  """'validation accuracy A, test accuracy B' (without the first when none is held out)."""
  return ', '.join(f'{split} accuracy {final[split]["accuracy"]:.4f}'
                   for split in ('validation', 'test') if split in final)


def _already_trained(runs: list[SeedRun], finals: list[dict], states: list, step: int):
  """The logged results and final states of runs that trained and evaluated to the end:
  a rerun of the same command recompiles, retrains and rewrites nothing."""
  results = {}
  for run, final, state in zip(runs, finals, states):
    state, _ = checkpoints.restore(run.mngr, step, state)
    run.close()
    final.pop('run')
    say(f'{run.workdir} finished its {step} steps already ({_accuracies(final)}): '
        f'nothing to do. Use a new --workdir to train again.')
    results[run.config.seed] = dict(final, state=state)
  return results


def _train_seeds(config, workdirs: dict, allow_config_change: bool, stop) -> dict:
  seeds = list(workdirs)
  k = len(seeds)
  spec = datasets.get_spec(config.data.name)
  if k > 1 and not spec.in_memory:
    raise config_lib.ConfigError(f'Several seeds in one program need an in-memory data '
                                 f'set, not the streamed {config.data.name}: run one '
                                 f'seed per process.')
  configs = []
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    configs.append(c)
  data = Data(config)  # Before any file is written: bad data settings leave nothing.
  total_steps = steps_for(config, data.steps_per_epoch)
  if total_steps <= 0:
    raise config_lib.ConfigError(
        f'num_epochs {config.num_epochs} rounds to 0 steps: an epoch of '
        f'{data.sizes["train"]} training examples is {data.steps_per_epoch} steps of batch '
        f'{config.batch_size}; train for longer (num_epochs, or num_train_steps).')
  runs = [SeedRun(c, workdirs[c.seed], allow_config_change) for c in configs]
  model = build_model(config, spec.num_classes)
  tx, schedule = optim.create_optimizer(config.optimizer, total_steps)
  trainer = Trainer(config, model, tx, schedule, data.image_shape, data.mean, data.std,
                    spec.num_classes, resident=data.resident(), num_seeds=k)
  rngs = [seed_rngs(seed) for seed in seeds]
  states = [trainer.init_state(r[0]) for r in rngs]
  n_params = models.count_params(states[0].params)

  # Resume from the newest step every seed has saved (the same one, unless a group was
  # killed between its seeds' saves: then the later ones are dropped, to train again).
  start = max(set.intersection(*(set(r.mngr.all_steps()) for r in runs)), default=0)
  if start == total_steps:
    finals = [metrics_io.final_metrics(r.workdir, start) for r in runs]
    if all(finals):
      return _already_trained(runs, finals, states, start)
  pendings = [[] for _ in runs]
  for i, run in enumerate(runs):
    for later in [s for s in run.mngr.all_steps() if s > start]:
      run.mngr.delete(later)
    if start:
      states[i], pendings[i] = checkpoints.restore(run.mngr, start, states[i])
    elif config.init_from:
      states[i] = checkpoints.load_weights(config.init_from, states[i])
    run.log = metrics_io.MetricsLog(run.workdir, resume_step=start, final_step=total_steps)
    if start == 0:
      run.log.write_hparams(metrics_io.flat_hparams(run.config))
  if start:
    say(f'Resumed from the checkpoint of step {start} in {", ".join(workdirs.values())}.')
  elif config.init_from:
    say(f'Starting from the weights of {config.init_from}.')
  state = trainer.stack(states)
  step_rng = trainer.stack([jnp.asarray(r[1]) for r in rngs])
  pending = [_stack([p[j] for p in pendings]) for j in range(len(pendings[0]))]

  arch = ' '.join(f'{key}={config.model[key]}' for key in ('depth', 'shortcut', 'residual')
                  if key in config.model)
  together = f' x {k} seeds in one program (vmap)' if k > 1 else ''
  say(f'{config.model.name} {arch}: {n_params:,} parameters; {config.data.name} '
      f'{data.sizes["train"]}/{data.sizes["validation"]}/{data.sizes["test"]}; '
      f'{total_steps} steps of batch {config.batch_size}{together} on {jax.device_count()} '
      f'{jax.devices()[0].platform} device(s).')

  def feed(step):
    return trainer.to_device(_stack([data.train_batch(step, seed) for seed in seeds]),
                             train=True)

  t0 = time.perf_counter()
  compiled = trainer.train_step.lower(state, feed(start), step_rng,
                                      *trainer.resident).compile()
  compile_s = time.perf_counter() - t0
  say(f'Compiled the train step in {compile_s:.1f} s.')

  last_log = [time.perf_counter(), start]

  def run_pending(i, host):
    return [_pick(m, i, k) for m in host]

  def write_summaries(done):
    """Averages each run's metrics since the last summary; marks NaN/Inf runs diverged."""
    host = to_host(pending)
    pending.clear()
    now = time.perf_counter()
    steps_per_s = (done - last_log[1]) / (now - last_log[0])
    last_log[:] = [now, done]
    shown = []
    for i, run in enumerate(runs):
      if not run.active:
        continue
      mine = run_pending(i, host)
      summary = {key: float(np.mean([m[key] for m in mine])) for key in mine[0]}
      if not np.isfinite(summary['loss']):
        run.mngr.wait_until_finished()
        run.result = {'diverged_at': done, 'message': (
            f'The training loss became {summary["loss"]} by step {done}: lower the '
            f'learning rate; checkpoints up to step {run.mngr.latest_step()} are kept.')}
        if k > 1:  # A single run raises it (train_and_evaluate).
          say(f'seed {run.config.seed}: {run.result["message"]}')
        continue
      summary.update(steps_per_second=steps_per_s,
                     images_per_second=steps_per_s * config.batch_size)
      run.log.write(done, 'train', summary)
      shown.append(summary)
    if shown:
      losses = ' '.join(f'{m["loss"]:.4f}' for m in shown)
      accuracies = ' '.join(f'{m["accuracy"]:.4f}' for m in shown)
      say(f'step {done}/{total_steps} | loss {losses} | acc {accuracies} | '
          f'{steps_per_s:.2f} steps/s | {steps_per_s * config.batch_size * k:.0f} img/s | '
          f'ETA {_format_eta(seconds_left(done, total_steps, start, now - t_train))}')

  def save_all(done, force=False):
    host = to_host(pending)
    for i, run in enumerate(runs):
      if run.active and run.mngr.latest_step() != done:
        checkpoints.save(run.mngr, done, trainer.pick(state, i), run_pending(i, host),
                         force=force)

  t_train = time.perf_counter()
  with contextlib.nullcontext(stop) if stop else StopSignal() as stop:
    for step in range(start, total_steps):
      state, metrics = compiled(state, feed(step), step_rng, *trainer.resident)
      if pending:
        # At most two steps in flight: the host waits for the previous step while this
        # one runs, so a SIGTERM is acted on within a step or two (not when the queue
        # drains) and batches do not pile up in device memory.
        jax.block_until_ready(pending[-1])
      pending.append(metrics)
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        write_summaries(done)
        if not any(run.active for run in runs):
          break
      if config.eval_every_steps > 0 and done % config.eval_every_steps == 0 \
          and done != total_steps and data.sizes['validation']:
        for i, run in enumerate(runs):
          if run.active:
            val = trainer.evaluate(trainer.pick(state, i), data.eval_batches('validation'))
            run.log.write(done, 'validation', val)
            say(f'step {done}: validation loss {val["loss"]:.4f} accuracy '
                f'{val["accuracy"]:.4f}' + (f' (seed {run.config.seed})' if k > 1 else ''))
      if config.checkpoint_every_steps > 0 and done % config.checkpoint_every_steps == 0:
        save_all(done)
      if stop.should_stop(done - start) and done < total_steps:
        save_all(done, force=True)  # Un-logged metrics go with it: resume is exact.
        for run in runs:
          run.close()
        say(f'Stopped by {stop.received} after step {done}: saved a checkpoint; run the '
            f'same command to continue.')
        # A seed that diverged before the stop keeps its record: the sweep notes it.
        return {run.config.seed: ({'stopped_at': done, 'state': trainer.pick(state, i)}
                                  if run.active else run.result)
                for i, run in enumerate(runs)}

  train_s = time.perf_counter() - t_train
  for i, run in enumerate(runs):
    if not run.active:
      run.close()
      continue
    mine = trainer.pick(state, i)
    final = {}
    if data.sizes['validation']:
      final['validation'] = trainer.evaluate(mine, data.eval_batches('validation'))
    final['test'] = trainer.evaluate(mine, data.eval_batches('test'))
    for split, values in final.items():
      run.log.write(total_steps, split, values)
    if run.mngr.latest_step() != total_steps:
      checkpoints.save(run.mngr, total_steps, mine, force=True)
    # first_step: a resumed run's train_seconds time only its steps from there on.
    run.log.write(total_steps, 'run', {'compile_seconds': compile_s,
                                       'train_seconds': train_s, 'first_step': start,
                                       'params': n_params, 'seeds_together': k})
    run.close()
    say(f'Final (step {total_steps}{f", seed {run.config.seed}" if k > 1 else ""}): '
        f'{_accuracies(final)}, test loss {final["test"]["loss"]:.4f}; '
        f'trained in {train_s:.0f} s.')
    run.result = dict(final, state=mine)
  return {run.config.seed: run.result for run in runs}
