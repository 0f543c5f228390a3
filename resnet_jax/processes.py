"""Joining a multi-process run: `jax.distributed` between the processes of one run, with
a line saying what it waits for (nothing else is printed until all have connected)."""

JOIN_TIMEOUT_S = 300  # How long a process waits for the others; JAX then aborts it.


def join(coordinator: str | None = None, num_processes: int | None = None,
         process_id: int | None = None):
  """jax.distributed.initialize with these (None: JAX finds them, as on TPU pod slices
  and under SLURM's srun); the CPU's collectives through gloo."""
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU processes only.
  where = (f'a {num_processes}-process run at {coordinator} as process {process_id}'
           if coordinator else 'the cluster JAX finds')
  print(f'Joining {where}: waiting for every process to connect (JAX aborts after '
        f'{JOIN_TIMEOUT_S // 60} minutes if one does not)...', flush=True)
  jax.distributed.initialize(coordinator, num_processes, process_id,
                             initialization_timeout=JOIN_TIMEOUT_S)
  print(f'All {jax.process_count()} processes joined; this is process '
        f'{jax.process_index()}.', flush=True)
