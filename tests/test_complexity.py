"""Parameter and MAC counts against hand counts of the ViT's layers."""

import os
import subprocess
import sys

from configs import gmm_hatnet_cifar10, gmm_vit_cifar10, hatnet_cifar10, vit_cifar10
from gmm_vit_jax.complexity import markdown_table, model_complexity
from gmm_vit_jax.models.hatnet import STEM_WIDTH, conv_side

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
  done = subprocess.run(
    [sys.executable, '-m', 'gmm_vit_jax.complexity', '--config=configs/gmm_vit_cifar10.py'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  header, row = done.stdout.splitlines()
  assert row.split() == ['gmm_vit_cifar10.py', '2,693,122', '170.5M', '184.6M', '9']
  for name, value in [('params', '2,693,122'), ('(full)', '184.6M'), ('depth', '9')]:
    assert header.index(name) + len(name) == row.rindex(value) + len(value)  # Right-aligned.
  assert done.stderr == ''


def test_markdown_row():
  row = dict(config='gmm_vit_cifar10.py', **model_complexity(gmm_vit_cifar10.get_config()))
  assert markdown_table([row]).splitlines()[-1] == (
    '| gmm_vit_cifar10.py | 2,693,122 | 170.5M | 184.6M | 9 |'
  )


def hatnet_hand_count(model, *, image_size: int, num_classes: int, channels: int = 3):
  """HAT-Net's parameters, Linear/Conv MACs and attention-product MACs, written out.

  Per block of width C on an S x S map (G x G windows, pooling ratio r, expansion e,
  depthwise k x k): GroupNorm, q/k/v with biases, GMM's 2 K H scalars; if G > 1 two more
  GroupNorms and the global q/k/v; the output projection; the inverted residual's two
  GroupNorms, 1x1 expand and reduce and depthwise kernel, none with biases.
  """
  kernels = model.mask.num_kernels if model.mask.kind == 'gmm' else 0
  side = conv_side(conv_side(image_size, model.stem_strides[0]), model.stem_strides[1])
  first = conv_side(image_size, model.stem_strides[0])
  d0 = model.dims[0]
  params = 9 * channels * STEM_WIDTH + STEM_WIDTH + 2 * STEM_WIDTH + 9 * STEM_WIDTH * d0 + d0
  linear = first**2 * 9 * channels * STEM_WIDTH + side**2 * 9 * STEM_WIDTH * d0
  attention = 0
  for s, c in enumerate(model.dims):
    if s:
      side = conv_side(side, 2)
      params += 9 * model.dims[s - 1] * c + c + 2 * c
      linear += side**2 * 9 * model.dims[s - 1] * c
    g, r, e, k = (
      model.grid_sizes[s],
      model.ds_ratios[s],
      model.expansions[s],
      model.kernel_sizes[s],
    )
    heads, hidden, n = c // model.head_dim, e * c, side * side
    block = 2 * c + 3 * (c * c + c) + 2 * kernels * heads + (c * c + c)
    block += 2 * c + 2 * c * hidden + k * k * hidden + 2 * c
    block_linear = 4 * n * c * c + 2 * n * c * hidden + n * k * k * hidden
    window = g * g if g > 1 else n
    block_attention = 2 * n * window * c
    if g > 1:
      pooled = (side // r) ** 2
      block += 4 * c + 3 * (c * c + c)
      block_linear += n * c * c + 2 * pooled * c * c
      block_attention += 2 * n * pooled * c
    params += model.depths[s] * block
    linear += model.depths[s] * block_linear
    attention += model.depths[s] * block_attention
  params += model.dims[-1] * num_classes + num_classes
  linear += model.dims[-1] * num_classes
  return params, linear, attention


def test_hatnet_counts_and_the_readme_rows():
  """Counter against hand counts; the README's HAT-Net rows are what it gives now."""
  rows = []
  for module in (hatnet_cifar10, gmm_hatnet_cifar10):
    config = module.get_config()
    counts = model_complexity(config)
    params, linear, attention = hatnet_hand_count(config.model, image_size=32, num_classes=10)
    assert counts['params'] == params
    assert counts['macs_paper'] == linear and counts['macs_full'] == linear + attention
    rows.append(dict(config=f'{module.__name__.split(".")[-1]}.py', **counts))
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  for line in markdown_table(rows).splitlines()[2:]:
    assert line in readme
  tiny = hatnet_cifar10.imagenet_tiny('none')
  params, _, _ = hatnet_hand_count(tiny, image_size=224, num_classes=1000)
  assert params == 12_650_152  # the published 12.7M
