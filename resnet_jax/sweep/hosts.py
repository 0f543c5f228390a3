"""Which slice of the grid this host runs under --shard_index=auto: its index among the
hosts that run the same command, and their count, from where it runs: SLURM's tasks
(SLURM_PROCID of SLURM_NTASKS), a TPU slice's workers (TPU_WORKER_ID of
TPU_WORKER_HOSTNAMES, as GKE sets them; else the TPU VM's metadata server, as JAX
reads it), so that `gcloud compute tpus tpu-vm ssh --worker=all --command "..."` runs
the grid over the slice with one command."""

import os
import urllib.request

from resnet_jax import config_lib

_METADATA = 'http://metadata.google.internal/computeMetadata/v1/instance/attributes/'


def _metadata(key: str, timeout: float) -> str | None:
  """A TPU VM's metadata attribute, or None off Google Cloud."""
  request = urllib.request.Request(_METADATA + key, headers={'Metadata-Flavor': 'Google'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.read().decode()
  except OSError:
    return None


def worker_slot(environ=None, metadata_timeout: float = 2.0) -> tuple[int, int]:
  """(index, count) of this host among the sweep's hosts; ConfigError where nothing
  says."""
  env = os.environ if environ is None else environ
  if 'SLURM_PROCID' in env and 'SLURM_NTASKS' in env:
    return int(env['SLURM_PROCID']), int(env['SLURM_NTASKS'])
  if 'TPU_WORKER_ID' in env and env.get('TPU_WORKER_HOSTNAMES'):
    return int(env['TPU_WORKER_ID']), len(env['TPU_WORKER_HOSTNAMES'].split(','))
  index = _metadata('agent-worker-number', metadata_timeout)
  endpoints = _metadata('worker-network-endpoints', metadata_timeout)
  if index is not None and endpoints:
    return int(index), len(endpoints.split(','))
  raise config_lib.ConfigError(
      '--shard_index=auto: nothing here says which host this is (no SLURM_PROCID and '
      'SLURM_NTASKS, no TPU_WORKER_ID and TPU_WORKER_HOSTNAMES, no TPU VM metadata); '
      'give --shard_index=I --num_shards=N.')


def resolve(shard_index: str, num_shards: str, environ=None) -> tuple[int, int]:
  """--shard_index and --num_shards as numbers ('auto': from `worker_slot`)."""
  auto = None
  if 'auto' in (shard_index, num_shards):
    auto = worker_slot(environ)
  out = []
  for flag, value, slot in (('shard_index', shard_index, 0), ('num_shards', num_shards, 1)):
    if value == 'auto':
      out.append(auto[slot])
    else:
      try:
        out.append(int(value))
      except ValueError:
        raise config_lib.ConfigError(f'--{flag}={value}: give a whole number, or auto.') \
            from None
  if auto and num_shards != 'auto' and out[1] != auto[1]:
    raise config_lib.ConfigError(
        f'--num_shards={num_shards}, but {auto[1]} hosts run this command: give '
        '--num_shards=auto (or leave it out) with --shard_index=auto.')
  return out[0], out[1]
