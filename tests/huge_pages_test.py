"""glibc's transparent huge pages for XLA:CPU's buffers (resnet_jax/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from resnet_jax import benchmark
from resnet_jax import huge_pages

THP = '/sys/kernel/mm/transparent_hugepage/enabled'

# A 64 MiB buffer allocated by XLA at every call, as a step's temporaries are: the page
# faults of five calls, after one.
_PROBE = '''
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2)
x = jnp.ones(1 << 24)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def test_the_tunable_is_added_after_the_users_own_and_never_over_their_choice():
  assert huge_pages.with_huge_pages({'A': '1'}) == {
      'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert huge_pages.with_huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})[
      'GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  mine = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}
  assert huge_pages.with_huge_pages(mine) == mine
  assert huge_pages.requested(huge_pages.with_huge_pages({}))
  assert not huge_pages.requested(mine) and not huge_pages.requested({})


def _faults(env) -> int:
  out = subprocess.run([sys.executable, '-c', _PROBE], env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux') or not os.path.exists(THP)
                    or '[never]' in open(THP).read(),
                    reason='no transparent huge pages on this machine')
def test_xlas_buffers_fault_in_huge_pages_not_4k_ones():
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  small, huge = _faults(env), _faults(huge_pages.with_huge_pages(env))
  # 5 x 64 MiB: 81,920 faults of 4 KiB pages; of 2 MiB pages, 160.
  assert small > 40_000, small
  assert huge < small / 10, (small, huge)


def test_the_benchmarks_rows_run_with_huge_pages(monkeypatch):
  seen = {}

  def fake_run(cmd, env, **kw):
    seen['env'] = env
    raise OSError('stop here')

  monkeypatch.setattr(subprocess, 'run', fake_run)
  with pytest.raises(OSError):
    benchmark.run_row_isolated({'model': 'resnet20'})
  assert huge_pages.requested(seen['env'])


def test_the_single_run_command_restarts_once_with_them_and_peers_never_see_them(tmp_path):
  script = tmp_path / 'restart.py'
  script.write_text(
      'import os, sys\n'
      'import resnet_jax\n'
      'from resnet_jax import huge_pages\n'
      'print("start", os.getpid(), flush=True)\n'
      'huge_pages.restart_with_huge_pages()\n'
      'print("env", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])\n'
      'print("user", resnet_jax.USER_ENVIRONMENT.get("GLIBC_TUNABLES"))\n')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  for mine, want_user in ((None, 'None'), ('glibc.malloc.arena_max=2',
                                           'glibc.malloc.arena_max=2')):
    run_env = env if mine is None else dict(env, GLIBC_TUNABLES=mine)
    out = subprocess.run([sys.executable, str(script), '--flag=1'], env=run_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    starts = [l for l in lines if l.startswith('start')]
    assert len(starts) == 2 and len(set(starts)) == 1, lines  # Once, in the same process.
    tunables = ('' if mine is None else mine + ':') + 'glibc.malloc.hugetlb=1'
    assert f"env {tunables} ['--flag=1']" in lines
    assert f'user {want_user}' in lines  # What a peer of the benchmark would inherit.
  # The user's own hugetlb setting: no restart.
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env=dict(env, GLIBC_TUNABLES='glibc.malloc.hugetlb=0'), timeout=120)
  assert len([l for l in out.stdout.splitlines() if l.startswith('start')]) == 1
