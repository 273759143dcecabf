"""The PyTorch twin of the reference ViT: names, sizes, mask math and patch order."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import gmm_vit_cifar10, vit_cifar10
from gmm_vit_jax.models.tokens import patchify
from gmm_vit_jax.torch_models import build_torch_model
from gmm_vit_jax.torch_models import vit as torch_vit
from tests.model_testing import tiny_vit_config


def _trainable(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('get_config, expected', [
    (vit_cifar10.get_config, 2_692_426),
    (gmm_vit_cifar10.get_config, 2_693_122),
])
def test_parameter_counts_are_the_reference_counts(get_config, expected):
  model = build_torch_model(get_config().model, num_classes=10, image_size=32, channels=3)
  assert _trainable(model) == expected


@pytest.mark.parametrize('kind, mask_keys', [
    ('none', []),
    ('gmm', ['fn.mask.sigma', 'fn.mask.alpha', 'fn.mask.mask']),
    ('elm', ['fn.mask.mask']),
])
def test_state_dict_names_are_the_reference_names(kind, mask_keys):
  model = build_torch_model(tiny_vit_config(kind, depth=1).model, num_classes=10,
                            image_size=32, channels=3)
  layer = 'transformer.layers.0'
  expected = {
      'mask', 'pos_embedding', 'to_patch_embedding.1.weight', 'to_patch_embedding.1.bias',
      f'{layer}.0.norm.weight', f'{layer}.0.norm.bias', f'{layer}.0.fn.to_qkv.weight',
      f'{layer}.0.fn.to_out.0.weight', f'{layer}.0.fn.to_out.0.bias',
      f'{layer}.1.norm.weight', f'{layer}.1.norm.bias',
      f'{layer}.1.fn.net.0.weight', f'{layer}.1.fn.net.0.bias',
      f'{layer}.1.fn.net.3.weight', f'{layer}.1.fn.net.3.bias',
      'mlp_head.0.weight', 'mlp_head.0.bias', 'mlp_head.1.weight', 'mlp_head.1.bias',
  } | {f'{layer}.0.{k}' for k in mask_keys} | ({'cls_token'} if kind == 'none' else set())
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
  g = np.einsum('kh,khij->hij', alpha,
                np.exp(-d2[None, None] / (2 * (sigma[:, :, None, None] ** 2 + 1e-5))))
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


@pytest.mark.parametrize('field, value', [
    ('pool', 'cls'), ('mask.mode', 'add'), ('attention.qkv_bias', True),
])
def test_configs_without_a_reference_twin_are_rejected(field, value):
  config = tiny_vit_config('gmm')
  section, _, name = field.rpartition('.')
  (config.model[section] if section else config.model)[name] = value
  with pytest.raises(ValueError, match=f'model.{field.split(".")[0]}'):
    build_torch_model(config.model, num_classes=10, image_size=32, channels=3)
