"""The lesson's model against the lesson's own Keras program, side by side in one run: one
epoch of `configs/seed_mnist.py` and of `peers/keras_lesson.py` on the same data, timed
and scored from what each writes (metrics.jsonl, the Keras program's JSON). The Keras
program runs as its users run it, with TensorFlow's defaults
(resnet_jax/peer_process.py)."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from resnet_jax import metrics_io
from resnet_jax import peer_process
from resnet_jax import run_dir

CONFIG = 'configs/seed_mnist.py'


def summary(records: list[dict], keras: dict, ours_wall: float, keras_wall: float) -> dict:
  """Our run's records and the Keras program's JSON -> seconds, accuracies and ratios.
  Training and evaluation: ours compile + steps + evaluations (of the held-out 10% and
  the test split), Keras' fit (its validation pass included) + evaluate."""
  run = [r for r in records if r['split'] == 'run'][-1]
  test = [r for r in records if r['split'] == 'test'][-1]
  ours = run['compile_seconds'] + run['train_seconds'] + run['eval_seconds']
  theirs = keras['fit_seconds'] + keras['evaluate_seconds']
  return {'lesson_seconds': ours, 'keras_seconds': theirs,
          'lesson_speed_ratio': theirs / ours,  # > 1: ours is faster.
          'lesson_wall_seconds': ours_wall, 'keras_wall_seconds': keras_wall,
          'lesson_test_accuracy': test['accuracy'],
          'keras_test_accuracy': keras['test_accuracy'],
          'tensorflow': keras['environment']['tensorflow'],
          'keras_environment': keras['environment']}


def combine(pairs: list[dict]) -> dict:
  """Several runs' `summary`s as one: mean seconds and accuracies, the accuracies'
  standard deviations over the runs, their number."""
  out = {k: float(np.mean([p[k] for p in pairs])) for k in pairs[0]
         if k not in ('tensorflow', 'keras_environment')}
  out['lesson_speed_ratio'] = out['keras_seconds'] / out['lesson_seconds']
  for k in ('lesson_test_accuracy', 'keras_test_accuracy'):
    out[f'{k}_std'] = float(np.std([p[k] for p in pairs]))
  return dict(out, runs=len(pairs), tensorflow=pairs[0]['tensorflow'],
              keras_environment=pairs[0]['keras_environment'])


def lines(s: dict) -> list[str]:
  """The comparison as the benchmark prints it, with the issue's targets."""
  if 'error' in s:
    return [f'lesson model against Keras: not measured ({s["error"]})']
  ratio, gap = s['lesson_speed_ratio'], abs(s['lesson_test_accuracy']
                                             - s['keras_test_accuracy'])
  runs = s.get('runs', 1)
  each = 'one epoch' if runs == 1 else f'one epoch, mean of {runs} runs each'
  spread = lambda k: f' +- {s[k + "_std"]:.4f}' if runs > 1 else ''
  note = ('' if runs > 1 else '; one run each: runs of either differ by about half a '
          'point, --lesson_runs=3 or more to test it')
  return [f'lesson model, {each}, speed JAX / Keras {s["tensorflow"]}: {ratio:.2f} '
          f'(training and evaluation {s["lesson_seconds"]:.0f} s vs '
          f'{s["keras_seconds"]:.0f} s; whole process {s["lesson_wall_seconds"]:.0f} s vs '
          f'{s["keras_wall_seconds"]:.0f} s; target >= 1: '
          f'{"met" if ratio >= 1 else "NOT met"})',
          f'lesson model test accuracy: JAX {s["lesson_test_accuracy"]:.4f}'
          f'{spread("lesson_test_accuracy")}, Keras {s["keras_test_accuracy"]:.4f}'
          f'{spread("keras_test_accuracy")} (within a point: '
          f'{"yes" if gap <= 0.01 else "NO"}{note})',
          f'Keras ran as: {peer_process.describe(s["keras_environment"])}']


def _run(cmd: list[str]) -> float:
  """Runs `cmd` from the repository; its wall seconds. A failure raises RuntimeError with
  its last line of output."""
  t = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if out.returncode:
    tail = (out.stderr.strip() or out.stdout.strip() or '(no output)').splitlines()[-1]
    raise RuntimeError(f'{" ".join(cmd[1:4])} failed: {tail}')
  return time.perf_counter() - t


def compare(workdir: str, data: str = 'fashion_mnist', runs: int = 1) -> dict:
  """`runs` epochs of each, alternating, ours first (seeds 0, 1, ...; Keras seeds itself),
  into `workdir` (fresh runs each time); `combine`d summaries, or {'error': why} where
  one of them cannot run here."""
  import importlib.util
  try:
    found = importlib.util.find_spec('tensorflow') is not None
  except ImportError:
    found = False
  if not found:
    return {'error': 'TensorFlow is not installed'}
  arg = ':mnist' if data == 'mnist' else ''
  pairs = []
  for seed in range(runs):
    ours_dir = os.path.join(workdir, f'seed_mnist_{seed}')
    shutil.rmtree(ours_dir, ignore_errors=True)  # Not a resumed run: a whole epoch.
    try:
      ours_wall = _run([sys.executable, '-m', 'resnet_jax.main', f'--config={CONFIG}{arg}',
                        f'--workdir={ours_dir}', f'--config.seed={seed}'])
      keras, keras_wall = peer_process.run('keras_lesson.py', [f'--data={data}'])
    except RuntimeError as e:
      return {'error': str(e)}
    run_dir.write_text(os.path.join(workdir, f'keras_{seed}.json'), json.dumps(keras))
    pairs.append(summary(metrics_io.read_records(ours_dir), keras, ours_wall, keras_wall))
    if runs > 1:
      print(f'  run {seed + 1}/{runs}: JAX {pairs[-1]["lesson_test_accuracy"]:.4f} in '
            f'{pairs[-1]["lesson_seconds"]:.0f} s, Keras {pairs[-1]["keras_test_accuracy"]:.4f}'
            f' in {pairs[-1]["keras_seconds"]:.0f} s', flush=True)
  return combine(pairs)
