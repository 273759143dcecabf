"""The benchmark against the reference code, run on a stand-in for its folder: its output,
what each side runs, and its errors; not its speed."""

import json
import os
import subprocess
import sys

import pytest

from gmm_vit_jax.benchmarks import reference_speed
from gmm_vit_jax.benchmarks.cpu_info import cpu_description
from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = 'gmm_vit_jax.benchmarks.reference_speed'

# The reference code's layout and entry points, with a linear model that writes down what
# create_model was given; swin stands for a backbone that cannot be built here.
FAKE_CREATE_MODEL = """
import json
import os

import torch


def create_model(img_size, n_classes, args):
  with open(os.path.join(os.path.dirname(__file__), 'received.json'), 'w') as f:
    json.dump(dict(vars(args), img_size=img_size, n_classes=n_classes), f)
  if args.model == 'swin':
    raise RuntimeError('this backbone needs a GPU')
  width = 3 * img_size * img_size if args.is_GMM else 1
  return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width, n_classes))
"""
FAKE_LOSSES = """
import torch


class LabelSmoothingCrossEntropy(torch.nn.Module):
  def forward(self, x, target):
    return torch.nn.functional.cross_entropy(x, target, label_smoothing=0.1)
"""
# The project's GMM-ViT config at the tests' tiny size.
TINY_CONFIG = """
from configs import gmm_vit_cifar10, tiny


def get_config(arg='cifar10'):
  return tiny.shrink(gmm_vit_cifar10.get_config(arg))
"""


@pytest.fixture
def reference_dir(tmp_path):
  folder = tmp_path / 'reference'
  for package, module, source in (
    ('models', 'create_model', FAKE_CREATE_MODEL),
    ('utils', 'losses', FAKE_LOSSES),
  ):
    (folder / package).mkdir(parents=True)
    (folder / package / '__init__.py').write_text('')
    (folder / package / f'{module}.py').write_text(source)
  return folder


def run(*args, python_options=()):
  return subprocess.run(
    [sys.executable, *python_options, '-m', MODULE, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
    env={**os.environ, **QUICK_COMPILES_ENV},
  )


def test_reference_side_trains_the_reference_gmm_model_without_jax(reference_dir):
  done = run(
    f'--reference_dir={reference_dir}',
    '--side=reference',
    '--backbones=pit',
    '--batch_size=4',
    '--steps=1',
    python_options=['-X', 'importtime'],
  )
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(result) == {'side', 'backbone', 'torch', 'torch_threads', 'images_per_s'}
  assert result['side'] == 'reference' and result['backbone'] == 'pit'
  assert result['images_per_s'] > 0 and result['torch_threads'] >= 1
  received = json.loads((reference_dir / 'models' / 'received.json').read_text())
  assert received['model'] == 'pit' and received['is_GMM'] is True
  assert received['is_SLM'] is False and received['num_kernals'] == 5
  assert (received['img_size'], received['n_classes']) == (32, 10)
  imported = [line.rsplit('|', 1)[-1].strip() for line in done.stderr.splitlines()]
  assert 'torch' in imported
  assert not [m for m in imported if m.split('.')[0] in ('jax', 'flax', 'optax')]
  assert not [m for m in imported if m.startswith(('gmm_vit_jax.models', 'gmm_vit_jax.training'))]


def test_a_backbone_the_reference_cannot_build_is_reported_not_raised(reference_dir):
  done = run(
    f'--reference_dir={reference_dir}',
    '--side=reference',
    '--backbones=swin',
    '--batch_size=4',
    '--steps=1',
  )
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['error'] == 'RuntimeError: this backbone needs a GPU'
  assert 'images_per_s' not in result


def test_the_table_gives_both_sides_and_their_ratio(reference_dir, tmp_path):
  configs = tmp_path / 'configs'
  configs.mkdir()
  (configs / 'gmm_vit_cifar10.py').write_text(TINY_CONFIG)
  done = run(
    f'--reference_dir={reference_dir}',
    f'--configs={configs}',
    '--backbones=vit',
    '--batch_size=4',
    '--steps=1',
    '--rounds=1',
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.splitlines()
  assert lines[0] == f'CPU: {cpu_description()}'
  assert lines[1].startswith('load average ') and 'jax ' in lines[2] and 'torch ' in lines[2]
  assert 'XLA_FLAGS=' in lines[2]
  header = next(i for i, line in enumerate(lines) if line.startswith('backbone'))
  assert lines[header].split()[:7] == [
    'backbone',
    'project',
    'img/s',
    'reference',
    'img/s',
    'project',
    '/',
  ]
  (row,) = lines[header + 1 :]
  name, project, reference, ratio, each_round = row.split()
  project, reference = (float(x.replace(',', '')) for x in (project, reference))
  assert name == 'vit' and project > 0 and reference > 0
  assert float(ratio) == pytest.approx(project / reference, rel=0.01, abs=0.006)
  assert each_round == f'{project:,.1f}/{reference:,.1f}'


def test_a_row_shows_the_side_that_failed():
  result = dict(
    cpu='Example CPU',
    load_average=[0.5, 1.0],
    jax='0',
    xla_flags='',
    torch='0',
    torch_threads=2,
    batch_size=4,
    steps=1,
    rounds=2,
    rows=[
      dict(
        backbone='swin',
        project=10.0,
        reference=None,
        ratio=None,
        project_rounds=[9.0, 11.0],
        reference_rounds=[],
        errors={'reference': 'RuntimeError: no'},
      )
    ],
  )
  row = reference_speed.report(result)[-1]
  assert row.split()[:6] == ['swin', '10.0', '-', '-', '9.0/-', '11.0/-']
  assert row.endswith('reference failed: RuntimeError: no')


@pytest.mark.parametrize('make', ['missing', 'empty'])
def test_a_folder_that_is_not_the_reference_code_is_one_error_line(tmp_path, make):
  folder = tmp_path / 'reference'
  if make == 'empty':
    folder.mkdir()
  done = run(f'--reference_dir={folder}', '--backbones=vit')
  assert done.returncode == 1
  assert done.stderr.startswith(f'error: --reference_dir={folder}: ')
  assert 'models/create_model.py' in done.stderr and 'git clone' in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout
