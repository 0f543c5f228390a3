"""Transparent huge pages for XLA:CPU's per-step buffers, through glibc's malloc.

XLA:CPU allocates a step's temporaries afresh at every call (74 MiB for the quick
ResNet-20 at batch 128). glibc takes blocks that large from the kernel with mmap and
returns them when the step ends, so each step faults every 4 KiB page in again: 18,900
page faults a step for the quick ResNet-20. glibc's tunable `glibc.malloc.hugetlb=1`
(glibc 2.35 on; older ones ignore it) has malloc ask for transparent huge pages (2 MiB,
where the kernel's THP setting is `madvise` or `always`): about 500 faults a step and
steps 1.2-1.4x faster (docs/performance.md). glibc reads tunables only as a process
starts, so the processes the project starts to train or time steps get it in their
environment (the sweep's CPU workers, the benchmark's rows); a run started by hand takes
it with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m resnet_jax.main ...`. A user's
own setting of the tunable wins; the benchmark's peers get the user's environment, never
this (resnet_jax.USER_ENVIRONMENT).
"""

VARIABLE = 'GLIBC_TUNABLES'
TUNABLE = 'glibc.malloc.hugetlb'


def _tunables(env) -> list[str]:
  return [t for t in env.get(VARIABLE, '').split(':') if t]


def with_huge_pages(env) -> dict:
  """A copy of `env` whose GLIBC_TUNABLES asks for huge pages, unless it sets glibc's
  hugetlb tunable already (to anything: the user's choice stands)."""
  tunables = _tunables(env)
  if any(t.split('=', 1)[0] == TUNABLE for t in tunables):
    return dict(env)
  return {**env, VARIABLE: ':'.join(tunables + [f'{TUNABLE}=1'])}


def requested(env) -> bool:
  """Whether `env` asks glibc for transparent huge pages (hugetlb=1)."""
  return f'{TUNABLE}=1' in _tunables(env)
