"""The published-table command, end to end on the offline digits with tiny models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart_size, tiny
from gmm_vit_jax import errors, reproduce
from gmm_vit_jax.published import BACKBONES, DATASETS, PUBLISHED
from tests.model_testing import quick_compiles

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def one_epoch(config):
  config = tiny.shrink(config)
  config.epochs = 1
  return config


def test_published_table_has_every_cell_of_the_papers_table():
  assert set(PUBLISHED) == {(b, d) for b in BACKBONES for d in DATASETS}
  assert PUBLISHED[('vit', 'cifar10')] == (93.65, 95.06)
  assert PUBLISHED[('t2t', 'tiny_imagenet')] == (61.50, 63.33)
  assert all(0 < a < 100 and 0 < b < 100 for a, b in PUBLISHED.values())


def test_digits_runs_every_seed_then_skips_finished_runs(tmp_path):
  workdir = str(tmp_path)
  with quick_compiles():
    rows = reproduce.reproduce(
      workdir, datasets=['digits'], backbones=['vit'], configs=CONFIGS, shrink=one_epoch, seeds=2
    )
  reproduce.write_table(rows, workdir, kind='tiny models')
  [row] = rows
  assert (row['dataset'], row['backbone'], row['published']) == ('digits', 'vit', None)
  for variant in reproduce.VARIANTS:
    for seed, name in enumerate((f'{variant}_vit', f'{variant}_vit_seed1')):
      with open(os.path.join(workdir, 'digits', name, 'summary.json')) as f:
        summary = json.load(f)
      assert row[variant]['final'][seed] == 100.0 * summary['eval_accuracy']
      assert row[variant]['best'][seed] == 100.0 * summary['best_eval_accuracy']
      with open(os.path.join(workdir, 'digits', name, 'config.json')) as f:
        assert json.load(f)['seed'] == seed
  table = open(os.path.join(workdir, 'table.md')).read()
  assert 'mean ± standard deviation over 2 seeds' in table
  assert os.path.getsize(os.path.join(workdir, 'table.png')) > 10_000

  stamps = {
    p: os.path.getmtime(os.path.join(workdir, 'digits', p, 'summary.json'))
    for p in os.listdir(os.path.join(workdir, 'digits'))
  }
  assert len(stamps) == 4
  again = reproduce.reproduce(
    workdir, datasets=['digits'], backbones=['vit'], configs=CONFIGS, shrink=one_epoch, seeds=2
  )
  assert again == rows
  assert stamps == {
    p: os.path.getmtime(os.path.join(workdir, 'digits', p, 'summary.json')) for p in stamps
  }


def _row(dataset, backbone, plain_best, plain_final, gmm_best, gmm_final):
  return dict(
    dataset=dataset,
    backbone=backbone,
    plain=dict(best=plain_best, final=plain_final),
    gmm=dict(best=gmm_best, final=gmm_final),
    published=PUBLISHED.get((backbone, dataset)),
  )


def test_table_shows_best_and_final_beside_the_published_number():
  rows = [_row('cifar10', 'vit', [93.5], [93.0], [95.75], [95.5])]
  header, _, line = reproduce.markdown_table(rows).splitlines()
  assert header == (
    '| dataset | model | plain best | plain final | plain, paper | GMM best '
    '| GMM final | GMM, paper | GMM - plain, best | GMM - plain, final '
    '| GMM - plain, paper |'
  )
  assert line == (
    '| cifar10 | vit | 93.50 (-0.15) | 93.00 | 93.65 | 95.75 (+0.69) | 95.50 '
    '| 95.06 | +2.25 | +2.50 | +1.41 |'
  )
  assert 'best_acc1' in reproduce.caption(rows, 'the paper configs')


def test_seeds_give_mean_spread_and_paired_differences():
  plain, gmm = [90.0, 92.0, 97.0], [91.0, 95.0, 96.5]
  rows = [_row('digits', 't2t', plain, plain, gmm, [80.0, 81.0, 82.0])]
  table = reproduce.markdown_table(rows)
  assert 'paper' not in table.splitlines()[0]  # Nothing published for the digits.
  cells = table.splitlines()[-1].split(' | ')
  difference = np.subtract(gmm, plain)
  assert cells[2] == f'{np.mean(plain):.2f} ± {np.std(plain, ddof=1):.2f}'
  assert cells[6] == f'+{np.mean(difference):.2f} ± {np.std(difference, ddof=1):.2f}'
  assert cells[7] == '-12.00 ± 2.65 |'


def test_unknown_backbone_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='--backbones=hatnet must name some of vit'):
    reproduce.reproduce(str(tmp_path), datasets=['digits'], backbones=['hatnet'])


def test_the_config_files_are_read_from_the_folder_given(tmp_path):
  (tmp_path / 'vit_cifar10.py').write_text(
    'from configs import vit_cifar10\n\n\ndef get_config(dataset):\n'
    '  config = vit_cifar10.get_config(dataset)\n  config.epochs = 7\n  return config\n'
  )
  assert reproduce.run_config(str(tmp_path), 'vit', 'plain', 'digits').epochs == 7
  with pytest.raises(errors.ConfigError, match='gmm_vit_cifar10.py does not exist: --configs'):
    reproduce.run_config(str(tmp_path), 'vit', 'gmm', 'digits')


@pytest.mark.parametrize('backbone', BACKBONES)
def test_quickstart_size_gives_every_backbone_a_model_that_learns_the_digits(backbone):
  from flax import nnx

  from gmm_vit_jax.models import build_from_config
  from tests.model_testing import count_params

  config = reproduce.run_config(CONFIGS, backbone, 'gmm', 'digits', shrink=quickstart_size.shrink)
  assert (config.epochs, config.batch_size, config.eval_batch_size) == (60, 64, 360)
  assert config.model.mask.kind == 'gmm' and not config.augment.flip
  model = nnx.eval_shape(lambda: build_from_config(config))
  assert 80_000 < count_params(model) < 200_000


def test_seeds_below_one_is_one_error_line(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.reproduce',
      f'--workdir={tmp_path}',
      '--datasets=digits',
      '--backbones=vit',
      '--tiny',
      '--seeds=0',
    ],
    cwd=os.path.dirname(CONFIGS),
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == 'error: --seeds=0 must be at least 1.'
