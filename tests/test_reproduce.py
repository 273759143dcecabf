"""The published-table command, end to end on the offline digits with tiny models."""

import os

import pytest

from configs import tiny
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


def test_digits_runs_then_skips_finished_runs(tmp_path):
  workdir = str(tmp_path)
  with quick_compiles():
    rows = reproduce.reproduce(workdir, datasets=['digits'], backbones=['vit', 'cait'],
                               configs=CONFIGS, shrink=one_epoch)
  reproduce.write_table(rows, workdir, tiny_run=True)
  assert [(r['dataset'], r['backbone']) for r in rows] == [('digits', 'vit'), ('digits', 'cait')]
  for row in rows:
    assert row['published'] is None
    for variant in reproduce.VARIANTS:
      assert 0.0 <= row[variant] <= 100.0
      assert os.path.exists(os.path.join(workdir, 'digits', f'{variant}_{row["backbone"]}',
                                         'summary.json'))
  table = open(os.path.join(workdir, 'table.md')).read()
  assert f"| digits | vit | {rows[0]['plain']:.2f} | — | — | {rows[0]['gmm']:.2f} |" in table
  assert os.path.getsize(os.path.join(workdir, 'table.png')) > 10_000

  stamps = {p: os.path.getmtime(os.path.join(workdir, 'digits', p, 'summary.json'))
            for p in os.listdir(os.path.join(workdir, 'digits'))}
  again = reproduce.reproduce(workdir, datasets=['digits'], backbones=['vit', 'cait'],
                              configs=CONFIGS, shrink=one_epoch)
  assert again == rows
  assert stamps == {p: os.path.getmtime(os.path.join(workdir, 'digits', p, 'summary.json'))
                    for p in stamps}


def test_table_puts_each_cell_beside_the_published_number():
  rows = [dict(dataset='cifar10', backbone='vit', plain=93.0, gmm=95.5,
               published=PUBLISHED[('vit', 'cifar10')])]
  line = reproduce.markdown_table(rows).splitlines()[-1]
  assert line == ('| cifar10 | vit | 93.00 | 93.65 | -0.65 | 95.50 | 95.06 | +0.44 | +2.50 '
                  '| +1.41 |')


def test_unknown_backbone_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='--backbones=hatnet must name some of vit'):
    reproduce.reproduce(str(tmp_path), datasets=['digits'], backbones=['hatnet'])


def test_the_config_files_are_read_from_the_folder_given(tmp_path):
  (tmp_path / 'vit_cifar10.py').write_text(
      'from configs import vit_cifar10\n\n\ndef get_config(dataset):\n'
      '  config = vit_cifar10.get_config(dataset)\n  config.epochs = 7\n  return config\n')
  assert reproduce.run_config(str(tmp_path), 'vit', 'plain', 'digits').epochs == 7
  with pytest.raises(errors.ConfigError, match='gmm_vit_cifar10.py does not exist: --configs'):
    reproduce.run_config(str(tmp_path), 'vit', 'gmm', 'digits')
