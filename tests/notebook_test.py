"""The notebook (notebooks/depth_ablation.ipynb): committed without outputs, and run from
top to bottom on the CPU, through nbclient and a real kernel, with tiny parameters put
after its parameters cell as papermill would."""

import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOK = os.path.join(REPO, 'notebooks', 'depth_ablation.ipynb')


def _read():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _parameters_index(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, tagged
  return tagged[0]


def test_the_committed_notebook_carries_no_outputs():
  nb = _read()
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert len(code) >= 5
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
  assert nb.cells[_parameters_index(nb)].cell_type == 'code'


def _texts(nb, kind):
  """Every stream's text (kind 'stream') or every displayed item of MIME type `kind`."""
  out = []
  for cell in nb.cells:
    for o in cell.get('outputs', []):
      if kind == 'stream' and o.output_type == 'stream':
        out.append(o.text)
      elif o.output_type in ('display_data', 'execute_result') and kind in o.data:
        out.append(o.data[kind])
  return out


def test_the_notebook_runs_top_to_bottom_on_the_cpu(fashion_data_dir, tmp_path, monkeypatch):
  nb = _read()
  workdir = str(tmp_path / 'sweep')
  extra = ' '.join(f'--config.overrides.{k}={v}' for k, v in {
      'data.data_dir': fashion_data_dir, 'data.validation_size': 100,
      'model.num_filters': 4, 'batch_size': 32, 'eval_batch_size': 100,
      'log_every_steps': 2, 'eval_every_steps': 4, 'checkpoint_every_steps': 4}.items())
  # The lesions alone: the analyses' own tests cover the rest; the nets stall at 4 steps.
  why = '--analyses=lesion --lesion_examples=64 --lesion_draws=1 --lesion_max_deleted=1 --stalled'
  nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(
      f"DEPTHS = '8'\nSEEDS = '0'\nSTEPS = 4\nWORKDIR = {workdir!r}\n"
      f"EXTRA_FLAGS = {extra!r}\nWHY_FLAGS = {why!r}\n",
      metadata={'tags': ['injected-parameters']}))
  # The kernel and the commands it starts inherit this (compiling is most of their time).
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  # Started in notebooks/, as a local Jupyter would be: the set-up finds the checkout.
  client = NotebookClient(nb, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': os.path.join(REPO, 'notebooks')}})
  try:
    client.execute()  # Raises CellExecutionError, with the cell's traceback, on any error.
  finally:
    nbformat.write(nb, str(tmp_path / 'executed.ipynb'))  # To read when it fails.
  streams = ''.join(_texts(nb, 'stream'))
  assert 'on CPU:' in streams and f'Checkout: {REPO}' in streams
  assert '2 cells in this shard' in streams  # Depth 8, plain and residual, seed 0.
  tables = _texts(nb, 'text/markdown')
  assert any('| 8 | plain |' in t and '| 8 | residual (A) |' in t for t in tables)
  assert any('## Why skips work' in t for t in tables)
  # The sweep's four figures, then the lesions' (the only analysis run here).
  assert len(_texts(nb, 'image/png')) == 5
  assert not any('](' in t for t in tables if '## Why skips work' in t)  # No broken links.
  for name in ('plain-8-seed0', 'resnetA-8-seed0'):
    assert os.path.exists(os.path.join(workdir, name, 'why', 'lesion.json'))
