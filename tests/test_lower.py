"""Every config's train and eval steps lower for CUDA and TPU on this CPU machine."""

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from configs import tiny
from gmm_vit_jax import complexity, lower, platforms
from gmm_vit_jax.data.info import dataset_info

ROOT = pathlib.Path(__file__).parents[1]
CONFIGS = sorted(
  p.stem
  for p in (ROOT / 'configs').glob('*.py')
  if p.stem not in ('__init__', 'common', 'tiny', 'quickstart_size')
)


def test_every_config_file_is_covered():
  assert len(CONFIGS) >= 15 and 'gmm_vit_cifar10' in CONFIGS and 'quickstart' in CONFIGS


@pytest.mark.parametrize('platform', lower.PLATFORMS)
@pytest.mark.parametrize('name', CONFIGS)
def test_config_lowers(name, platform):
  config = tiny.shrink(importlib.import_module(f'configs.{name}').get_config())
  result = lower.lower(config, platform)
  assert json.loads(json.dumps(result)) == result
  assert result['platform'] == platform and result['model'] == config.model.name
  assert result['dtype'] == ('bfloat16' if config.model.dtype == 'auto' else config.model.dtype)
  cudnn = {
    call
    for step in ('train', 'eval')
    for call in result[step]['custom_calls']
    if call.startswith('__cudnn$')
  }
  # cuDNN takes an additive mask or none, so the multiplicative GMM keeps to XLA.
  if platform == 'tpu' or config.model.mask.kind != 'none':
    assert not cudnn
  # float32 configs multiply in float32 on every platform; bfloat16 ones at its default.
  full = 'HIGHEST' if result['dtype'] == 'float32' else 'DEFAULT'
  for step in ('train', 'eval'):
    assert result[step]['stablehlo_bytes'] > 10_000
    products = dict(result[step]['products'])
    if step == 'train' and full == 'DEFAULT' and config.augment.inception_crop:
      # The Inception crop's resize runs at HIGHEST whatever the model computes in
      # (augment/inception_crop.py): its two products, rows and columns.
      assert products.pop('HIGHEST') == 2
    assert list(products) == [full] and products[full] > 0
  # A train step (forward, backward, update) costs more per image than an eval step, even
  # where it drops 30% of the patches (GMM-HViT).
  per_image = {
    step: result[step]['flops'] / result[f'{key}batch_size']
    for step, key in (('train', ''), ('eval', 'eval_'))
  }
  assert per_image['train'] > per_image['eval'] > 0
  assert jax.default_backend() == 'cpu' and platforms.backend() == 'cpu'


def test_plain_swin_takes_cudnn_on_cuda_and_counts_its_flops():
  """Swin's 4x4 windows hold 16 tokens and bfloat16 heads 8 wide: cuDNN runs them (the
  paper configs compute in float32, which cuDNN's fused attention does not take)."""
  config = tiny.shrink(importlib.import_module('configs.swin_cifar10').get_config())
  config.model.dtype = 'bfloat16'
  cuda = lower.lower(config, 'cuda')
  layers = sum(config.model.depths)
  assert cuda['train']['custom_calls'] == {
    '__cudnn$fmhaScaleBiasSoftmax': layers,
    '__cudnn$fmhaScaleBiasSoftmaxBackward': layers,
  }
  assert cuda['eval']['custom_calls'] == {'__cudnn$fmhaScaleBiasSoftmax': layers}
  assert cuda['flops_source'].endswith('with_xla_attention_for_cudnn')
  # The forward pass's products, counted independently from the traced model, are most of
  # an eval step's FLOPs (2 per multiply-accumulate; the rest is softmax, norms, GELU).
  products = 2 * complexity.model_complexity(config)['macs_full'] * cuda['eval_batch_size']
  assert products < cuda['eval']['flops'] < 2 * products


def test_float32_paper_config_takes_highest_precision_products_on_tpu():
  """Left to its default, a TPU multiplies float32 in one bfloat16 pass: a float32 paper
  config's every dot product and convolution states HIGHEST in the lowered StableHLO."""
  config = tiny.shrink(importlib.import_module('configs.gmm_t2t_cifar10').get_config())
  config.batch_size = config.eval_batch_size = 8
  assert config.model.dtype == 'float32'
  with platforms.lowering_for('tpu'):
    steps = lower._steps(config)
    modules = {
      name: lower._export(step, args, 'tpu').mlir_module() for name, (step, args) in steps.items()
    }
  for module in modules.values():
    ops = re.findall(r'= stablehlo\.(?:dot_general|convolution)\b[^\n]*', module)
    assert len(ops) > 10
    assert all(op.count('HIGHEST') == 2 for op in ops)  # Both operands of each.
    assert lower.products(module) == {'HIGHEST': len(ops)}
  config.model.dtype = 'bfloat16'
  bfloat16 = lower.lower(config, 'tpu')
  assert list(bfloat16['train']['products']) == ['DEFAULT']


def test_products_reads_dot_and_convolution_precisions():
  module = """
  %1 = stablehlo.convolution(%a, %b) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], \
window = {stride = [2, 2]} {feature_group_count = 1 : i64, precision_config = \
[#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]} : (tensor<8xf32>) -> tensor<8xf32>
  %2 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0], precision = [HIGHEST, \
HIGHEST] : (tensor<8x4xf32>, tensor<4xf32>) -> tensor<8xf32>
  %3 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<8x4xf32>, \
tensor<4xf32>) -> tensor<8xf32>
  %4 = stablehlo.add %a, %b : tensor<8xf32>
"""
  assert lower.products(module) == {'DEFAULT': 1, 'HIGHEST': 2}


def test_command_prints_one_json_line_and_no_runtime_notice():
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.lower',
      '--config=configs/gmm_vit_cifar10.py',
      '--platform=tpu',
      '--batch_size=8',
      '--config.eval_batch_size=8',
      '--config.model.depth=1',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  # Only the JSON line: no notice of a TPU runtime this machine has not got.
  assert done.stderr == '' and len(done.stdout.strip().splitlines()) == 1
  result = json.loads(done.stdout)
  info = dataset_info('cifar10')
  assert (result['platform'], result['batch_size'], result['model']) == ('tpu', 8, 'vit')
  assert result['dtype'] == 'float32' and list(result['train']['products']) == ['HIGHEST']
  assert result['train']['flops'] > 0 and info['image_size'] == 32


def test_unknown_platform_is_a_clear_error():
  config = tiny.shrink(importlib.import_module('configs.quickstart').get_config())
  with pytest.raises(ValueError, match="platform='rocm'"):
    lower.lower(config, 'rocm')
