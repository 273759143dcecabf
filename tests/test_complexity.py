"""Parameter and MAC counts against hand counts of the ViT's layers."""

import subprocess
import sys
import os

from configs import gmm_vit_cifar10, vit_cifar10
from gmm_vit_jax.complexity import markdown_table, model_complexity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vit_hand_count(tokens: int, dim=192, depth=9, mlp=384, patch_dim=48, patches=64, classes=10):
  """Linear-layer MACs and attention-product MACs of the CIFAR ViT, written out."""
  linear = patches * patch_dim * dim + dim * classes
  linear += depth * tokens * (dim * 3 * dim + dim * dim + 2 * dim * mlp)
  attention = depth * 2 * tokens * tokens * dim  # q.k^T and attention.v over 12 heads x 16.
  return linear, attention


def test_gmm_vit_counts():
  counts = model_complexity(gmm_vit_cifar10.get_config())
  linear, attention = vit_hand_count(tokens=64)
  assert counts['params'] == 2_693_122 and counts['depth'] == 9
  assert counts['macs_paper'] == linear
  assert counts['macs_full'] == linear + attention


def test_plain_vit_counts_include_the_cls_token():
  counts = model_complexity(vit_cifar10.get_config())
  linear, attention = vit_hand_count(tokens=65)
  assert counts['params'] == 2_692_426
  assert counts['macs_paper'] == linear and counts['macs_full'] == linear + attention


def test_cli_prints_a_table_and_nothing_else():
  done = subprocess.run([sys.executable, '-m', 'gmm_vit_jax.complexity',
                         '--config=configs/gmm_vit_cifar10.py'],
                        cwd=ROOT, capture_output=True, text=True, check=True)
  header, row = done.stdout.splitlines()
  assert row.split() == ['gmm_vit_cifar10.py', '2,693,122', '170.5M', '184.6M', '9']
  for name, value in [('params', '2,693,122'), ('(full)', '184.6M'), ('depth', '9')]:
    assert header.index(name) + len(name) == row.rindex(value) + len(value)  # Right-aligned.
  assert done.stderr == ''


def test_markdown_row():
  row = dict(config='gmm_vit_cifar10.py', **model_complexity(gmm_vit_cifar10.get_config()))
  assert markdown_table([row]).splitlines()[-1] == (
      '| gmm_vit_cifar10.py | 2,693,122 | 170.5M | 184.6M | 9 |')
