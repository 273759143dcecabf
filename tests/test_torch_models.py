"""PyTorch twins of the reference ViT, Swin and CaiT: names, sizes, mask math, geometry."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import (
  cait_cifar10,
  gmm_cait_cifar10,
  gmm_swin_cifar10,
  gmm_vit_cifar10,
  swin_cifar10,
  vit_cifar10,
)
from gmm_vit_jax.models.swin import window_partition, window_reverse
from gmm_vit_jax.models.tokens import patchify
from gmm_vit_jax.torch_models import build_torch_model, swin as torch_swin, vit as torch_vit
from tests.model_testing import tiny_cait_config, tiny_swin_config, tiny_vit_config


def _trainable(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Trainable parameters of the reference code at 32x32, 10 classes, K=5, counted by building
# its models.
@pytest.mark.parametrize(
  'get_config, expected',
  [
    (vit_cifar10.get_config, 2_692_426),
    (gmm_vit_cifar10.get_config, 2_693_122),
    (swin_cifar10.get_config, 7_073_188),
    (gmm_swin_cifar10.get_config, 7_074_088),
    (cait_cifar10.get_config, 9_020_618),
    (gmm_cait_cifar10.get_config, 9_021_578),
  ],
)
def test_parameter_counts_are_the_reference_counts(get_config, expected):
  model = build_torch_model(get_config().model, num_classes=10, image_size=32, channels=3)
  assert _trainable(model) == expected


@pytest.mark.parametrize(
  'kind, mask_keys',
  [
    ('none', []),
    ('gmm', ['fn.mask.sigma', 'fn.mask.alpha', 'fn.mask.mask']),
    ('elm', ['fn.mask.mask']),
  ],
)
def test_state_dict_names_are_the_reference_names(kind, mask_keys):
  model = build_torch_model(
    tiny_vit_config(kind, depth=1).model, num_classes=10, image_size=32, channels=3
  )
  layer = 'transformer.layers.0'
  expected = (
    {
      'mask',
      'pos_embedding',
      'to_patch_embedding.1.weight',
      'to_patch_embedding.1.bias',
      f'{layer}.0.norm.weight',
      f'{layer}.0.norm.bias',
      f'{layer}.0.fn.to_qkv.weight',
      f'{layer}.0.fn.to_out.0.weight',
      f'{layer}.0.fn.to_out.0.bias',
      f'{layer}.1.norm.weight',
      f'{layer}.1.norm.bias',
      f'{layer}.1.fn.net.0.weight',
      f'{layer}.1.fn.net.0.bias',
      f'{layer}.1.fn.net.3.weight',
      f'{layer}.1.fn.net.3.bias',
      'mlp_head.0.weight',
      'mlp_head.0.bias',
      'mlp_head.1.weight',
      'mlp_head.1.bias',
    }
    | {f'{layer}.0.{k}' for k in mask_keys}
    | ({'cls_token'} if kind == 'none' else set())
  )
  state = model.state_dict()
  assert set(state) == expected
  assert state['pos_embedding'].shape == (1, 64 + (kind == 'none'), 32)
  assert state[f'{layer}.0.fn.to_qkv.weight'].shape == (3 * 4 * 8, 32)
  if kind == 'gmm':
    assert state[f'{layer}.0.fn.mask.sigma'].shape == (5, 4, 1, 1)
  if kind == 'elm':
    assert state[f'{layer}.0.fn.mask.mask'].shape == (64, 64)


def test_gmm_mask_matches_numpy_gaussian_mixture():
  side, heads, kernels = 8, 3, 5
  mask = torch_vit.GaussianMixtureMask(heads, kernels, torch_vit.base_mask(side))
  logits = torch.randn(2, heads, side * side, side * side)
  with torch.no_grad():
    got = mask(logits).numpy()
  rows, cols = np.divmod(np.arange(side * side), side)
  d2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
  sigma = mask.sigma.detach().numpy()[:, :, 0, 0].astype(np.float64)
  alpha = mask.alpha.detach().numpy()[:, :, 0, 0].astype(np.float64)
  g = np.einsum(
    'kh,khij->hij', alpha, np.exp(-d2[None, None] / (2 * (sigma[:, :, None, None] ** 2 + 1e-5)))
  )
  np.testing.assert_allclose(got, g[None] * logits.numpy(), rtol=1e-4, atol=1e-5)


def test_base_mask_cuts_off_from_squared_distance_104():
  mask = torch_vit.base_mask(11)[0, 0].numpy()
  rows, cols = np.divmod(np.arange(121), 11)
  d2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
  assert np.all(mask[d2 >= 104] == 0)
  assert np.all(mask[d2 <= 87] > 0)


def test_patch_order_matches_flax_patchify():
  images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  ours = np.asarray(patchify(jnp.asarray(images), 4))
  twin = torch_vit.Patchify(4)(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_array_equal(twin, ours)


def test_eval_is_deterministic_and_training_drops_paths():
  config = tiny_vit_config('gmm')
  config.model.stochastic_depth = 0.5
  model = build_torch_model(config.model, num_classes=10, image_size=32, channels=3)
  x = torch.randn(4, 3, 32, 32)
  model.eval()
  with torch.no_grad():
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
  assert not torch.allclose(a, b)


@pytest.mark.parametrize(
  'field, value',
  [
    ('pool', 'cls'),
    ('mask.mode', 'add'),
    ('attention.qkv_bias', True),
  ],
)
def test_configs_without_a_reference_twin_are_rejected(field, value):
  config = tiny_vit_config('gmm')
  section, _, name = field.rpartition('.')
  (config.model[section] if section else config.model)[name] = value
  with pytest.raises(ValueError, match=f'model.{field.split(".")[0]}'):
    build_torch_model(config.model, num_classes=10, image_size=32, channels=3)


def _shapes(model: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
  return {
    k[len(prefix) :]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(prefix)
  }


@pytest.mark.parametrize('kind', ['none', 'gmm'])
def test_swin_state_dict_is_the_reference_layout(kind):
  model = build_torch_model(tiny_swin_config(kind).model, num_classes=10, image_size=32, channels=3)
  state = model.state_dict()
  # Stage 0: 8x8 tokens, width 8, 2 heads, four 4x4 windows; block 1 is shifted.
  gmm = (
    {
      'attn.mask.sigma': (5, 2, 1, 1),
      'attn.mask.alpha': (5, 2, 1, 1),
      'attn.mask.mask': (1, 1, 16, 16),
    }
    if kind == 'gmm'
    else {}
  )
  block = {
    'norm1.weight': (8,),
    'norm1.bias': (8,),
    'attn.relative_position_bias_table': (49, 2),
    'attn.relative_position_index': (16, 16),
    'attn.qkv.weight': (24, 8),
    'attn.qkv.bias': (24,),
    'attn.proj.weight': (8, 8),
    'attn.proj.bias': (8,),
    'norm2.weight': (8,),
    'norm2.bias': (8,),
    'mlp.fc1.weight': (16, 8),
    'mlp.fc1.bias': (16,),
    'mlp.fc2.weight': (8, 16),
    'mlp.fc2.bias': (8,),
    **gmm,
  }
  assert _shapes(model, 'layers.0.blocks.0.') == block
  assert _shapes(model, 'layers.0.blocks.1.') == {**block, 'attn_mask': (4, 16, 16)}
  assert _shapes(model, 'layers.0.downsample.') == {
    'reduction.weight': (16, 32),
    'norm.weight': (32,),
    'norm.bias': (32,),
  }
  # Stage 1: 4x4 tokens, one window, so no shift and no attn_mask in either block.
  assert 'layers.1.blocks.1.attn_mask' not in state
  assert not any(k.startswith('layers.1.downsample') for k in state)
  top = {k: tuple(v.shape) for k, v in state.items() if not k.startswith('layers.')}
  assert top == {
    'mask': (1, 1, 16, 16),
    'absolute_pos_embed': (1, 64, 8),
    'patch_embed.proj.weight': (8, 3, 4, 4),
    'patch_embed.proj.bias': (8,),
    'patch_embed.norm.weight': (8,),
    'patch_embed.norm.bias': (8,),
    'norm.weight': (16,),
    'norm.bias': (16,),
    'head.weight': (10, 16),
    'head.bias': (10,),
  }
  assert state['layers.0.blocks.0.attn.relative_position_index'].dtype == torch.int64
  assert set(np.unique(state['layers.0.blocks.1.attn_mask'].numpy())) == {0.0, -100.0}


@pytest.mark.parametrize('kind', ['none', 'gmm', 'elm'])
def test_cait_state_dict_is_the_reference_layout(kind):
  model = build_torch_model(tiny_cait_config(kind).model, num_classes=10, image_size=32, channels=3)
  masks = {
    'gmm': {
      '0.fn.fn.mask.sigma': (5, 2, 1, 1),
      '0.fn.fn.mask.alpha': (5, 2, 1, 1),
      '0.fn.fn.mask.mask': (1, 1, 64, 64),
    },
    'elm': {'0.fn.fn.mask.mask': (64, 64)},
    'none': {},
  }
  layer = {
    '0.scale': (1, 1, 16),
    '0.fn.norm.weight': (16,),
    '0.fn.norm.bias': (16,),
    '0.fn.fn.mix_heads_pre_attn': (2, 2),
    '0.fn.fn.mix_heads_post_attn': (2, 2),
    '0.fn.fn.to_q.weight': (16, 16),
    '0.fn.fn.to_kv.weight': (32, 16),
    '0.fn.fn.to_out.0.weight': (16, 16),
    '0.fn.fn.to_out.0.bias': (16,),
    '1.scale': (1, 1, 16),
    '1.fn.norm.weight': (16,),
    '1.fn.norm.bias': (16,),
    '1.fn.fn.net.0.weight': (32, 16),
    '1.fn.fn.net.0.bias': (32,),
    '1.fn.fn.net.3.weight': (16, 32),
    '1.fn.fn.net.3.bias': (16,),
  }
  for i in range(2):
    assert _shapes(model, f'patch_transformer.layers.{i}.') == {**layer, **masks[kind]}
    assert _shapes(model, f'cls_transformer.layers.{i}.') == layer
  top = {
    k: tuple(v.shape)
    for k, v in model.state_dict().items()
    if not k.startswith(('patch_transformer.', 'cls_transformer.'))
  }
  assert top == {
    'pos_embedding': (1, 64, 16),
    'cls_token': (1, 1, 16),
    'mask': (1, 1, 64, 64),
    'to_patch_embedding.1.weight': (16, 48),
    'to_patch_embedding.1.bias': (16,),
    'mlp_head.0.weight': (16,),
    'mlp_head.0.bias': (16,),
    'mlp_head.1.weight': (10, 16),
    'mlp_head.1.bias': (10,),
  }


def test_cait_layer_scale_restarts_in_each_transformer():
  model = build_torch_model(
    cait_cifar10.get_config().model, num_classes=10, image_size=32, channels=3
  )
  patch = [layer[1].scale[0, 0, 0].item() for layer in model.patch_transformer.layers]
  cls = [layer[0].scale[0, 0, 0].item() for layer in model.cls_transformer.layers]
  np.testing.assert_allclose(patch, [0.1] * 18 + [1e-5] * 6)
  np.testing.assert_allclose(cls, [0.1, 0.1])


def test_swin_stochastic_depth_grows_linearly():
  model = build_torch_model(
    swin_cifar10.get_config().model, num_classes=10, image_size=32, channels=3
  )
  rates = [block.drop_path_rate for stage in model.layers for block in stage.blocks]
  np.testing.assert_allclose(rates, np.arange(12) * 0.1 / 11, rtol=1e-6)


def test_swin_windows_match_flax():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  ours = np.asarray(window_partition(jnp.asarray(x), 4))
  twin = torch_swin.window_partition(torch.from_numpy(x), 4)
  np.testing.assert_array_equal(twin.numpy(), ours)
  np.testing.assert_array_equal(torch_swin.window_reverse(twin, 4, 8, 12).numpy(), x)
  np.testing.assert_array_equal(np.asarray(window_reverse(jnp.asarray(ours), 4, 8, 12)), x)


@pytest.mark.parametrize(
  'tiny_config, field, value, match',
  [
    (tiny_swin_config, 'mask.kind', 'elm', "model.mask.kind='elm'"),
    (tiny_swin_config, 'window_size', 8, 'model.window_size=8'),
    (tiny_swin_config, 'attention.score', 'mixture', 'model.attention.score'),
    (tiny_cait_config, 'attention.qkv_bias', True, 'model.attention'),
    (tiny_cait_config, 'mask.mode', 'add', 'model.mask.mode'),
  ],
)
def test_swin_and_cait_configs_without_a_reference_twin_are_rejected(
  tiny_config, field, value, match
):
  config = tiny_config('gmm')
  section, _, name = field.rpartition('.')
  (config.model[section] if section else config.model)[name] = value
  with pytest.raises(ValueError, match=match):
    build_torch_model(config.model, num_classes=10, image_size=32, channels=3)
