"""PiT and T2T-ViT: PyTorch twins, reference state_dicts <-> Flax models, both ways.

The twins build their GMM from the reference's float32 base mask, whose entries for
88 <= d2 < 104 are float32 subnormals off by up to ~1%; the Flax GMM evaluates the
Gaussian exactly. At the GMM's initial sigma and alpha that moves the mask by < 1e-3
there on a 16x16 grid, and the tiny models' logits by far less than the 1e-4 allowed.
"""

import functools

import numpy as np
import pytest
import torch
from flax import nnx

from configs import gmm_pit_cifar10, gmm_t2t_cifar10, pit_cifar10, t2t_cifar10
from gmm_vit_jax import convert, export
from gmm_vit_jax.models import build_model
from gmm_vit_jax.torch_models import build_torch_model, pit as torch_pit, vit as torch_vit
from tests.twin_testing import strong_twin

KINDS = ('none', 'gmm', 'elm')
CASES = [(name, kind) for name in ('pit', 't2t') for kind in KINDS]


pytestmark = pytest.mark.usefixtures('quick_compiles')


def tiny_config(name: str, kind: str, dataset: str = 'cifar10'):
  """The paper's PiT or T2T-ViT experiment shrunk, with the same grids.

  PiT: three one-layer stages 8, 16 and 32 wide on 16x16, 8x8 and 4x4 grids. T2T: a
  4-wide token transformer on 16x16 (32x32 and 16x16 on 64x64 images), a 16-wide
  two-layer encoder on 8x8.
  """
  module = pit_cifar10 if name == 'pit' else t2t_cifar10
  config = module.get_config(dataset)
  config.model = module.model(kind, dataset)
  if name == 'pit':
    config.model.update(dim=8, depths=(1, 1, 1), num_heads=(2, 2, 2), head_dim=4)
  else:
    config.model.update(token_dim=4, embed_dim=16, depth=2, num_heads=2)
  return config


def _state_dict(twin: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in twin.state_dict().items()}


def _images(size: int = 32, batch: int = 3, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


@nnx.jit
def _flax_logits(model: nnx.Module, images: np.ndarray):
  return model(images)


def _twin_logits(twin: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return twin(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize('name, kind', CASES)
def test_reference_weights_give_the_twins_logits(name, kind):
  config = tiny_config(name, kind)
  twin = strong_twin(config)
  model = convert.model_from_torch(_state_dict(twin), config)
  images = _images()
  expected = _twin_logits(twin, images)
  assert np.abs(expected).max() > 0.3
  np.testing.assert_allclose(np.asarray(_flax_logits(model, images)), expected, rtol=0, atol=1e-4)


def _randomised(model: nnx.Module, seed: int) -> dict[str, np.ndarray]:
  """The model's variables redrawn as `strong_twin` draws the twin's, loaded into it."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, value in export.flat_variables(model).items():
    if name.endswith(('sigma', 'alpha', 'pos_embed', 'cls_token')):
      out[name] = value
    elif name.endswith('mask.weight'):
      out[name] = rng.normal(size=value.shape)
    elif name.endswith('kernel'):
      out[name] = rng.normal(size=value.shape) / np.sqrt(np.prod(value.shape[:-1]))
    else:
      out[name] = rng.normal(1.0 if name.endswith('scale') else 0.0, 0.2, value.shape)
    out[name] = out[name].astype(np.float32)
  export.set_flat_variables(model, out)
  return out


@pytest.mark.parametrize('name, kind', CASES)
def test_flax_weights_load_into_the_twin_and_back(name, kind):
  config = tiny_config(name, kind)
  model = build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(1))
  variables = _randomised(model, seed=2)
  state_dict = convert.torch_from_variables(variables, config)
  twin = build_torch_model(config.model, num_classes=10, image_size=32, channels=3).eval()
  twin.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  images = _images(seed=1)
  expected = np.asarray(_flax_logits(model, images))
  assert np.abs(expected).max() > 0.3
  np.testing.assert_allclose(_twin_logits(twin, images), expected, rtol=0, atol=1e-4)
  back = convert.model_from_torch(state_dict, config)
  for key, value in export.flat_variables(back).items():
    np.testing.assert_array_equal(value, variables[key])


def test_t2t_with_two_token_transformers_on_64x64_images():
  config = tiny_config('t2t', 'gmm', 'tiny_imagenet')
  assert config.model.num_token_layers == 2
  twin = strong_twin(config)
  state_dict = _state_dict(twin)
  assert state_dict['tokens_to_token.attention1.mask'].shape == (1, 1, 1024, 1024)
  assert state_dict['tokens_to_token.attention2.attn.qkv.weight'].shape == (12, 36)
  model = convert.model_from_torch(state_dict, config)
  images = _images(size=64, batch=1, seed=3)
  np.testing.assert_allclose(
    np.asarray(_flax_logits(model, images)), _twin_logits(twin, images), rtol=0, atol=1e-4
  )


@functools.cache
def _full_size_twin(get_config) -> torch.nn.Module:
  return build_torch_model(get_config().model, num_classes=10, image_size=32, channels=3)


def _trainable(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
  'get_config, expected',
  [
    (pit_cifar10.get_config, 6_972_586),
    (gmm_pit_cifar10.get_config, 6_973_186),
    (t2t_cifar10.get_config, 6_486_080),
    (gmm_t2t_cifar10.get_config, 6_486_570),
  ],
)
def test_parameter_counts_are_the_reference_counts(get_config, expected):
  assert _trainable(_full_size_twin(get_config)) == expected


def test_pit_state_dict_has_the_reference_layout():
  state = _full_size_twin(gmm_pit_cifar10.get_config).state_dict()
  expected = {
    'to_patch_embedding.0.weight': (96, 3, 2, 2),
    'pos_embedding': (1, 257, 96),
    'cls_token': (1, 1, 96),
    'layers.0.mask': (1, 1, 256, 256),
    'layers.0.layers.1.0.fn.to_qkv.weight': (3 * 2 * 48, 96),
    'layers.0.layers.1.0.fn.mask.sigma': (5, 2, 1, 1),
    'layers.0.layers.1.0.fn.mask.mask': (1, 1, 256, 256),
    'layers.0.layers.1.1.fn.net.3.weight': (96, 192),
    'layers.1.downsample.net.0.weight': (192, 1, 3, 3),
    'layers.1.downsample.net.1.weight': (192, 192, 1, 1),
    'layers.1.cls_ff.weight': (192, 96),
    'layers.2.mask': (1, 1, 64, 64),
    'layers.2.layers.5.0.fn.to_out.0.weight': (192, 4 * 48),
    'layers.3.downsample.net.0.bias': (384,),
    'layers.4.layers.3.0.fn.mask.alpha': (5, 8, 1, 1),
    'mlp_head.1.weight': (10, 384),
  }
  assert {k: tuple(state[k].shape) for k in expected} == expected
  assert not any(k.startswith(('layers.4.layers.4', 'layers.5')) for k in state)


def test_t2t_state_dict_has_the_reference_layout():
  state = _full_size_twin(gmm_t2t_cifar10.get_config).state_dict()
  expected = {
    'tokens_to_token.attention1.mask': (1, 1, 256, 256),
    'tokens_to_token.attention1.norm1.weight': (27,),
    'tokens_to_token.attention1.attn.qkv.weight': (3 * 64, 27),
    'tokens_to_token.attention1.attn.proj.weight': (64, 64),
    'tokens_to_token.attention1.attn.mask.sigma': (5, 1, 1, 1),
    'tokens_to_token.attention1.attn.mask.mask': (1, 1, 256, 256),
    'tokens_to_token.attention1.mlp.fc1.weight': (64, 64),
    'tokens_to_token.norm.weight': (576,),
    'tokens_to_token.project.weight': (256, 576),
    'cls_token': (1, 1, 256),
    'pos_embed': (1, 64, 256),
    'mask': (1, 1, 64, 64),
    'blocks.11.attn.qkv.weight': (768, 256),
    'blocks.11.attn.mask.alpha': (5, 4, 1, 1),
    'blocks.11.mlp.fc2.weight': (256, 512),
    'head.weight': (10, 256),
  }
  assert {k: tuple(state[k].shape) for k in expected} == expected
  assert not any(k.startswith(('tokens_to_token.attention2', 'blocks.12')) for k in state)


def test_convolutions_and_qkv_are_split_and_transposed():
  config = tiny_config('pit', 'gmm')
  state_dict = _state_dict(strong_twin(config))
  variables = export.flat_variables(convert.model_from_torch(state_dict, config))
  depthwise = state_dict['layers.1.downsample.net.0.weight']  # (2C, 1, 3, 3)
  np.testing.assert_array_equal(
    variables['pools.0.depthwise.kernel'][1, 2, 0, :], depthwise[:, 0, 1, 2]
  )
  np.testing.assert_array_equal(
    variables['pools.0.pointwise.kernel'],
    state_dict['layers.1.downsample.net.1.weight'][:, :, 0, 0].T,
  )
  np.testing.assert_array_equal(
    variables['patch_embed.kernel'][0, 1, 2], state_dict['to_patch_embedding.0.weight'][:, 2, 0, 1]
  )
  np.testing.assert_array_equal(
    variables['stages.2.0.attention.mask.alpha'],
    state_dict['layers.4.layers.0.0.fn.mask.alpha'][:, :, 0, 0],
  )

  config = tiny_config('t2t', 'none')
  state_dict = _state_dict(strong_twin(config))
  variables = export.flat_variables(convert.model_from_torch(state_dict, config))
  qkv = state_dict['tokens_to_token.attention1.attn.qkv.weight']
  for i, name in enumerate(['query', 'score.key', 'value']):
    np.testing.assert_array_equal(
      variables[f'tokens_to_token.layers.0.attention.{name}.kernel'], qkv[4 * i : 4 * (i + 1)].T
    )


def test_pit_masks_leave_the_cls_row_and_column():
  mask = torch_pit.PatchGaussianMixtureMask(2, 3, torch_vit.base_mask(3))
  logits = torch.randn(2, 2, 10, 10)
  with torch.no_grad():
    got = mask(logits)
    inner = torch_vit.GaussianMixtureMask.forward(mask, logits[:, :, 1:, 1:])
  torch.testing.assert_close(got[:, :, 0], logits[:, :, 0], rtol=0, atol=0)
  torch.testing.assert_close(got[:, :, :, 0], logits[:, :, :, 0], rtol=0, atol=0)
  torch.testing.assert_close(got[:, :, 1:, 1:], inner, rtol=0, atol=0)
  assert not torch.allclose(got[:, :, 1:, 1:], logits[:, :, 1:, 1:])


def test_t2t_stochastic_depth_rises_over_the_encoder():
  rates = [block.drop_path_rate for block in _full_size_twin(t2t_cifar10.get_config).blocks]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 12), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
  'name, changes, message',
  [
    ('t2t', {'num_heads': 1}, 'model.num_heads'),
    ('t2t', {'num_token_layers': 2}, 'model.num_token_layers'),
    ('pit', {'num_heads': (1, 2, 2), 'head_dim': 8}, r'model.num_heads\[0\]'),
    ('pit', {'mask.mode': 'add'}, 'model.mask.mode'),
    ('t2t', {'attention.qkv_bias': True}, 'model.attention'),
  ],
)
def test_configs_without_a_reference_twin_are_rejected(name, changes, message):
  config = tiny_config(name, 'gmm')
  for field, value in changes.items():
    section, _, leaf = field.rpartition('.')
    (config.model[section] if section else config.model)[leaf] = value
  with pytest.raises(ValueError, match=message):
    build_torch_model(config.model, num_classes=10, image_size=32, channels=3)
  with pytest.raises(ValueError, match=message):
    convert.reference_mapping(config)
