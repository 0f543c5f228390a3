"""A private, real one-node SLURM cluster for the tests: Debian's munged, slurmctld and
slurmd with their own key, socket, ports, spool, state and logs under one directory,
addressed at 127.0.0.1 (its node named as the host, whose name resolves: JAX's SLURM
cluster finds process 0 by node name), and `SLURM_CONF` pointing at its config. Several pytest
workers share one cluster: the first starts it, each registers itself, the last to
leave stops the daemons."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time

PARTITION = 'debug'
CPUS = 2
DAEMONS = ('munged', 'slurmctld', 'slurmd', 'mungekey', 'sbatch', 'squeue', 'scontrol',
           'scancel', 'srun')

# Quick enough for tests: the main scheduler looks at pending jobs every second (not 60),
# a requeued job waits out a 5 s credential lifetime (not 120), a killed job's processes
# get 5 s between SIGTERM and SIGKILL.
CONFIG = """\
ClusterName=resnetjaxtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
MaxArraySize=1001
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterUnavailable(RuntimeError):
  """This machine cannot run the test cluster (the reason: packages, root)."""


def missing() -> str | None:
  """Why the cluster cannot start here, or None."""
  absent = [d for d in DAEMONS if not shutil.which(d)]
  if absent:
    return (f'{", ".join(absent)} not installed: `make test` installs slurm-wlm and munge '
            'with apt-get')
  if os.geteuid() != 0:
    return 'slurmd runs jobs as root here: run the SLURM tests as root'
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _alive(pid_file: str) -> bool:
  try:
    with open(pid_file) as f:
      os.kill(int(f.read().strip()), 0)
    return True
  except (OSError, ValueError):
    return False


def _run(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, **kw)


class Cluster:
  """The cluster under `root`: its config and the environment its clients need."""

  def __init__(self, root: str):
    self.root = root
    self.conf = os.path.join(root, 'slurm.conf')
    self.env = dict(os.environ, SLURM_CONF=self.conf)
    self.pid_files = [os.path.join(root, name) for name in
                      ('munge/munged.pid', 'slurmctld.pid', 'slurmd.pid')]

  def running(self) -> bool:
    return all(_alive(p) for p in self.pid_files)

  def start(self, timeout: float = 60.0):
    """Starts munged, slurmctld (with a clean state) and slurmd; waits until the node
    takes jobs."""
    self.stop()
    shutil.rmtree(self.root, ignore_errors=True)
    for sub in ('munge', 'state', 'spool', 'log'):
      os.makedirs(os.path.join(self.root, sub), mode=0o700)
    os.chmod(self.root, 0o700)
    key = os.path.join(self.root, 'munge', 'munge.key')
    _run(['mungekey', '--create', f'--keyfile={key}'], self.env, check=True)
    with open(self.conf, 'w') as f:
      f.write(CONFIG.format(host=socket.gethostname(), root=self.root,
                            partition=PARTITION, cpus=CPUS, mem_mb=8000,
                            ctld_port=_free_port(), slurmd_port=_free_port()))
    munge = os.path.join(self.root, 'munge')
    steps = [['munged', '--force', f'--socket={munge}/munge.socket', f'--key-file={key}',
              f'--log-file={self.root}/log/munged.log', f'--pid-file={munge}/munged.pid',
              f'--seed-file={munge}/munged.seed'],
             ['slurmctld', '-i'], ['slurmd']]
    for cmd in steps:
      out = _run(cmd, self.env)
      if out.returncode:
        self.stop()
        raise ClusterUnavailable(f'{cmd[0]} did not start: {(out.stderr or out.stdout)[-500:]}'
                                 f' (logs: {self.root}/log)')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      out = _run(['sinfo', '-h', '-N', '-o', '%T'], self.env)
      if out.returncode == 0 and out.stdout.strip() in ('idle', 'mixed', 'allocated'):
        return
      time.sleep(0.3)
    self.stop()
    raise ClusterUnavailable(f'the test cluster\'s node did not come up in {timeout:.0f} s '
                             f'(logs: {self.root}/log)')

  def stop(self):
    """Cancels the jobs left, stops the daemons (slurmd first, then slurmctld, munged),
    then kills whatever of the cluster still runs: a job's steps and processes (every
    process of the cluster has its SLURM_CONF in its environment)."""
    if self.running():
      with contextlib.suppress(subprocess.SubprocessError, OSError):
        _run(['scancel', '--user', 'root', '--full'], self.env)
        with contextlib.suppress(TimeoutError):
          self.wait_idle(timeout=15)
    self._stop_daemons()
    mark = f'SLURM_CONF={self.conf}'.encode()
    for pid in os.listdir('/proc'):
      if not pid.isdigit() or int(pid) == os.getpid():
        continue
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          if mark in f.read().split(b'\0'):
            os.kill(int(pid), signal.SIGKILL)
      except OSError:
        continue

  def _stop_daemons(self):
    for pid_file in reversed(self.pid_files):
      try:
        with open(pid_file) as f:
          pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
      except (OSError, ValueError):
        continue
      for _ in range(100):
        try:
          os.kill(pid, 0)
        except OSError:
          break
        time.sleep(0.05)
      else:
        with contextlib.suppress(OSError):
          os.kill(pid, signal.SIGKILL)

  def wait_idle(self, timeout: float = 60.0):
    """Waits until no job is left in the queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if not _run(['squeue', '-h'], self.env).stdout.strip():
        return
      time.sleep(0.5)
    raise TimeoutError(f'jobs still queued after {timeout:.0f} s')


@contextlib.contextmanager
def _locked(path: str):
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_cluster(base: str):
  """The cluster under `base` (a directory every test worker of the session shares),
  started by the first worker to ask and stopped by the last to leave."""
  os.makedirs(base, exist_ok=True)
  lock, users = os.path.join(base, 'cluster.lock'), os.path.join(base, 'users.json')
  cluster = Cluster(os.path.join(base, 'cluster'))
  me = os.getpid()
  with _locked(lock):
    try:
      with open(users) as f:
        present = [p for p in json.load(f) if _pid_alive(p)]
    except (OSError, ValueError):
      present = []
    if not cluster.running():
      cluster.start()
    with open(users, 'w') as f:
      json.dump(present + [me], f)
  try:
    yield cluster
  finally:
    with _locked(lock):
      with open(users) as f:
        left = [p for p in json.load(f) if p != me and _pid_alive(p)]
      with open(users, 'w') as f:
        json.dump(left, f)
      if not left:
        cluster.stop()


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
    return True
  except OSError:
    return False
