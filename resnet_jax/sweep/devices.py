"""The devices a sweep's cells will see, and how its worker processes share them."""

import os
import subprocess
import sys
from typing import NamedTuple

from resnet_jax import config_lib
from resnet_jax import huge_pages


class Devices(NamedTuple):
  """The devices a cell's process sees: JAX's platform ('cpu', 'cuda', 'rocm', 'tpu')
  and how many."""
  platform: str
  count: int


_PROBE = """
import jax
platform = jax.default_backend()
if platform == 'gpu':
  version = jax.local_devices()[0].client.platform_version.lower()
  platform = 'rocm' if 'rocm' in version else 'cuda'
print(platform, jax.local_device_count())
"""


def probe_devices() -> Devices:
  """This machine's devices, asked of JAX in a short-lived process, so that this driver
  never holds the accelerator its cells need."""
  out = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True, text=True,
                       timeout=300)
  try:
    platform, count = out.stdout.split()[-2:]
    return Devices(platform, int(count))
  except ValueError:  # JAX failed to start: the cells will say why.
    return Devices('cpu', 1)


def seeds_together(choice: str, devices: Devices, streamed: str = '') -> bool:
  """Resolves --vmap_seeds: 'auto' is on wherever the cells' devices are not the CPU,
  but never for a streamed data set (`streamed` names it: ImageNet), whose batches
  come one seed a process."""
  if streamed:
    if choice == 'on':
      raise config_lib.ConfigError(
          f'--vmap_seeds=on: seeds train together only on an in-memory data set, not '
          f'the streamed {streamed}: use --vmap_seeds=auto or off.')
    return False
  if choice != 'auto':
    return choice == 'on'
  return devices.platform != 'cpu'


def check_parallel(parallel: int, devices: Devices):
  """Refuses more workers than a TPU VM can serve (its chips take one process)."""
  if devices.platform == 'tpu' and parallel > 1:
    raise config_lib.ConfigError(
        f'--parallel={parallel} on a TPU VM: its TPU serves one process at a time, so '
        'run --parallel=1 (each depth and net then trains its seeds together in one '
        'program), or spread the grid over several VMs with --shard_index/--num_shards.')


_VISIBLE = {'cuda': 'CUDA_VISIBLE_DEVICES', 'rocm': 'HIP_VISIBLE_DEVICES'}


def compilation_cache(workdir: str) -> str:
  """The sweep's persistent XLA compilation cache: cells of one architecture compile the
  same programs, and JAX's cache compiles them once for the sweep and its analyses."""
  return os.path.join(os.path.abspath(workdir), '.jax_cache')


def worker_envs(workdir: str, n_workers: int, devices: Devices, sizes=(1,),
                environ=None) -> list[dict]:
  """The environments of the sweep's worker processes. On GPUs each worker gets GPUs of
  its own while there are enough (as many as divide every batch size in `sizes`),
  else a share of one GPU's memory; a cell's run shards over the GPUs it sees. On CPUs
  each worker's oneDNN gets its share of the cores as OpenMP threads: two workers on
  2 cores, each with oneDNN's default of 2, took 1.25x as long a step (quick
  ResNet-56, docs/performance.md), and glibc's transparent huge pages for XLA's
  per-step buffers (resnet_jax/huge_pages.py)."""
  env = dict(os.environ if environ is None else environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', compilation_cache(workdir))
  if devices.platform == 'cpu' and n_workers > 1:
    env.setdefault('OMP_NUM_THREADS', str(max(1, len(os.sched_getaffinity(0)) // n_workers)))
  if devices.platform == 'cpu':
    env = huge_pages.with_huge_pages(env)
  envs = [dict(env) for _ in range(n_workers)]
  var = _VISIBLE.get(devices.platform)
  if var is None or n_workers <= 1:  # (None when every cell is done.)
    return envs
  # The ids the user made visible, if any, else all: what the cells' JAX counts from.
  ids = env[var].split(',')[:devices.count] if env.get(var) else [
      str(i) for i in range(devices.count)]
  if n_workers <= len(ids):
    k = max(d for d in range(1, len(ids) // n_workers + 1)
            if all(size % d == 0 for size in sizes))
    for i, e in enumerate(envs):
      e[var] = ','.join(ids[i * k:(i + 1) * k])
  else:  # Workers share GPUs: each JAX process would otherwise take 75% of one.
    sharing = -(-n_workers // len(ids))
    for i, e in enumerate(envs):
      e[var] = ids[i % len(ids)]
      e.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / sharing:.2f}')
  return envs
