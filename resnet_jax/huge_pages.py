"""Transparent huge pages for XLA:CPU's per-step buffers, through glibc's malloc.

XLA:CPU allocates a step's temporaries afresh at every call (74 MiB for the quick
ResNet-20 at batch 128). glibc takes blocks that large from the kernel with mmap and
returns them when the step ends, so each step faults every 4 KiB page in again: 18,900
page faults a step for the quick ResNet-20. glibc's tunable `glibc.malloc.hugetlb=1`
(glibc 2.35 on; older ones ignore it) has malloc ask for transparent huge pages (2 MiB,
where the kernel's THP setting is `madvise` or `always`): about 500 faults a step and
steps 1.2-1.4x faster (docs/performance.md). glibc reads tunables only as a process
starts, so the processes the project starts to train or time steps get it in their
environment (the sweep's CPU workers, the benchmark's rows), and the single-run command
line restarts itself with it once (`restart_with_huge_pages`, on Linux). A user's own
setting of the tunable wins; the benchmark's peers get the user's environment, never
this (resnet_jax.USER_ENVIRONMENT).
"""

import os
import sys

VARIABLE = 'GLIBC_TUNABLES'
TUNABLE = 'glibc.malloc.hugetlb'
RESTARTED = 'RESNET_JAX_HUGE_PAGES_RESTARTED'  # Set in the restarted process: once only.


def _tunables(env) -> list[str]:
  return [t for t in env.get(VARIABLE, '').split(':') if t]


def with_huge_pages(env) -> dict:
  """A copy of `env` whose GLIBC_TUNABLES asks for huge pages, unless it sets glibc's
  hugetlb tunable already (to anything: the user's choice stands)."""
  if huge_pages_set(env):
    return dict(env)
  return {**env, VARIABLE: ':'.join(_tunables(env) + [f'{TUNABLE}=1'])}


def requested(env) -> bool:
  """Whether `env` asks glibc for transparent huge pages (hugetlb=1)."""
  return f'{TUNABLE}=1' in _tunables(env)


def restart_with_huge_pages() -> None:
  """Replaces this process (os.execve: the same interpreter, arguments and PID) by one
  whose environment asks glibc for huge pages, where it does not already and it runs on
  Linux; returns where nothing needs doing. Call it first thing in a command line's
  __main__, before JAX allocates anything."""
  if (not sys.platform.startswith('linux') or os.environ.get(RESTARTED)
      or huge_pages_set(os.environ)):
    return
  env = dict(with_huge_pages(os.environ), **{RESTARTED: '1'})
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def huge_pages_set(env) -> bool:
  """Whether `env` sets glibc's hugetlb tunable at all (the user's choice, or ours)."""
  return any(t.split('=', 1)[0] == TUNABLE for t in _tunables(env))


def without_ours(env) -> dict:
  """A copy of `env` without what `restart_with_huge_pages` added to it: the environment
  the user started the process with."""
  env = dict(env)
  if env.pop(RESTARTED, None):
    tunables = [t for t in _tunables(env) if t != f'{TUNABLE}=1']
    env.pop(VARIABLE, None)
    if tunables:
      env[VARIABLE] = ':'.join(tunables)
  return env
