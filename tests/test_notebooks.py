"""The Colab notebooks, executed headlessly on the CPU with tiny settings.

Like papermill, the test puts a cell of overrides after the notebook's `parameters`
cell, then runs every cell in a fresh kernel; a last cell it appends checks the
notebook's results. The CIFAR-10 notebook reads tfds's mock CIFAR-10 through the real
loading code (the machine has no CIFAR files).
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
  'model.dim': 16,
  'model.depth': 2,
  'model.num_heads': 2,
  'model.head_dim': 8,
  'schedule.warmup_epochs': 0,
}
CELL_TIMEOUT_S = 240


def execute(name: str, parameters: dict, *, setup: str = '', checks: str) -> nbformat.NotebookNode:
  """Runs colabs/<name>.ipynb with `parameters` overridden; returns the executed notebook."""
  nb = nbformat.read(os.path.join(ROOT, 'colabs', f'{name}.ipynb'), as_version=4)
  index = next(
    i for i, cell in enumerate(nb.cells) if 'parameters' in cell.metadata.get('tags', [])
  )
  injected = nbformat.v4.new_code_cell(
    '\n'.join([f'{key} = {value!r}' for key, value in parameters.items()] + [setup])
  )
  injected.metadata['tags'] = ['injected-parameters']
  nb.cells = (
    nb.cells[: index + 1] + [injected] + nb.cells[index + 1 :] + [nbformat.v4.new_code_cell(checks)]
  )
  NotebookClient(
    nb, timeout=CELL_TIMEOUT_S, kernel_name='python3', resources={'metadata': {'path': ROOT}}
  ).execute()
  return nb


def images_shown(nb: nbformat.NotebookNode, source_part: str) -> int:
  cell = next(c for c in nb.cells if c.cell_type == 'code' and source_part in c.source)
  return sum('image/png' in out.get('data', {}) for out in cell.outputs)


@pytest.fixture(autouse=True)
def cpu_kernel(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  for name, value in QUICK_COMPILES_ENV.items():  # The notebooks' flow is under test.
    monkeypatch.setenv(name, value)


def test_quickstart_notebook(tmp_path):
  workdir = str(tmp_path / 'run')
  nb = execute(
    'quickstart',
    dict(install=False, workdir=workdir, epochs=1, show_tensorboard=False, config_overrides=TINY),
    checks="""
assert summary['completed'] and summary['step'] == 1437 // 64
assert len(model.blocks) == 2 and run_config.model.dim == 16
assert abs(np.mean(predicted == labels) - summary['best_eval_accuracy']) < 1e-9
assert len(labels) == 360
""",
  )
  assert images_shown(nb, 'plot_gmm_masks(model)') == 1
  assert images_shown(nb, 'plt.subplots') == 1
  assert sorted(os.listdir(os.path.join(workdir, 'bundle'))) == [
    'config.json',
    'forward.jax_export',
    'params.safetensors',
    'preprocess.json',
  ]


def test_cifar10_tpu_notebook_on_mock_cifar10(tmp_path):
  workdir = str(tmp_path / 'run')
  overrides = dict(TINY, batch_size=16, eval_batch_size=16)
  nb = execute(
    'train_cifar10_tpu',
    dict(
      install=False, workdir=workdir, epochs=1, show_tensorboard=False, config_overrides=overrides
    ),
    setup="""
import tensorflow_datasets as tfds
mock_cifar10 = tfds.testing.mock_data(num_examples=32)
mock_cifar10.__enter__()
""",
    checks="""
assert config.dataset.name == 'cifar10' and config.model.mask.kind == 'gmm'
assert summary['completed'] and summary['step'] == 32 * 3 // 16
assert images.shape == (32, 32, 32, 3) and bundle.class_names[0] == 'airplane'
assert abs(np.mean(predicted == labels) - summary['best_eval_accuracy']) < 1e-9
""",
  )
  assert images_shown(nb, 'plot_gmm_masks(model)') == 1
  assert images_shown(nb, 'plt.subplots') == 1
  assert os.path.exists(os.path.join(workdir, 'bundle', 'forward.jax_export'))
