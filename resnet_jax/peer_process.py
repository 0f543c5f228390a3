"""The benchmark's peers run as their users run them: `python peers/SCRIPT.py ...` in a
process of its own, which imports nothing of this project (peers/ are plain scripts) and
inherits the environment this process started with, not the package's own settings
(resnet_jax.USER_ENVIRONMENT). Each peer writes its figures and its environment (versions,
threads, variables: peers/peer_env.py) as JSON."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import resnet_jax

PEERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'peers')


def environment() -> dict:
  """The environment a peer gets: the user's, as this process found it."""
  return dict(resnet_jax.USER_ENVIRONMENT)


def run(script: str, args: list[str], timeout: float | None = None) -> tuple[dict, float]:
  """Runs peers/`script` with `args` and `--output=JSON`; (the JSON it wrote, its wall
  seconds). A failure raises RuntimeError naming the script and its last line of output."""
  if not os.path.isfile(os.path.join(PEERS_DIR, script)):
    raise RuntimeError(f'{os.path.join(PEERS_DIR, script)} is missing: the peers run from '
                       'a checkout of the repository (an installed package has no peers/).')
  with tempfile.TemporaryDirectory(prefix='resnet_jax_peer_') as tmp:
    output = os.path.join(tmp, 'peer.json')
    t = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(PEERS_DIR, script), *args,
                          f'--output={output}'], capture_output=True, text=True,
                         env=environment(), cwd=tmp, timeout=timeout)
    seconds = time.perf_counter() - t
    if out.returncode:
      if out.returncode < 0:
        tail = f'killed by {signal.Signals(-out.returncode).name}'
      else:
        tail = (out.stderr.strip() or out.stdout.strip() or '(no output)').splitlines()[-1]
      raise RuntimeError(f'peers/{script} failed: {tail}')
    with open(output) as f:
      return json.load(f), seconds


def describe(env: dict) -> str:
  """A peer's environment (peer_env.describe's dict) in one line, as the benchmark prints it."""
  if 'torch' in env:
    what = (f'PyTorch {env["torch"]} eager, {env["intra_op_threads"]} intra-op and '
            f'{env["inter_op_threads"]} inter-op threads, oneDNN (mkldnn) '
            f'{"on" if env["mkldnn"] else "off"}, CPU capability {env["cpu_capability"]}')
  else:
    threads = lambda n: 'TensorFlow\'s default' if n == 0 else str(n)
    what = (f'TensorFlow {env["tensorflow"]} (Keras {env["keras"]}), oneDNN '
            f'{"on" if env["onednn"] else "off"}, intra-op threads '
            f'{threads(env["intra_op_threads"])}, inter-op {threads(env["inter_op_threads"])}')
  variables = ', '.join(f'{k}={v}' for k, v in env['variables'].items()) or 'none set'
  project = ', '.join(env['project_modules']) or 'none'
  return (f'{what}; Python {env["python"]}, {env["cpu_count"]} cores; thread and kernel '
          f'variables: {variables}; modules of this project imported: {project}')
