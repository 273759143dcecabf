"""Reference state_dict <-> Flax ViT, Swin, CaiT: same logits both ways, clear errors, the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from configs import gmm_vit_cifar10
from gmm_vit_jax import convert, export
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.models import build_model
from gmm_vit_jax.torch_models import build_torch_model
from tests.model_testing import tiny_cait_config, tiny_swin_config, tiny_vit_config
from tests.twin_testing import strong_twin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every backbone and mask the reference code builds (its ELM Swin does not).
REFERENCE_MODELS = [
  *[pytest.param(tiny_vit_config, kind, id=f'vit-{kind}') for kind in ('none', 'gmm', 'elm')],
  *[pytest.param(tiny_swin_config, kind, id=f'swin-{kind}') for kind in ('none', 'gmm')],
  *[pytest.param(tiny_cait_config, kind, id=f'cait-{kind}') for kind in ('none', 'gmm', 'elm')],
]


pytestmark = pytest.mark.usefixtures('quick_compiles')


def _twin(config, seed: int = 0) -> torch.nn.Module:
  """A random twin; ELM weights made non-zero so the mask matters."""
  torch.manual_seed(seed)
  twin = build_torch_model(config.model, num_classes=10, image_size=32, channels=3).eval()
  with torch.no_grad():
    for name, value in twin.named_parameters():
      if name.endswith('mask.mask'):
        value.normal_()
  return twin


def _state_dict(twin: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in twin.state_dict().items()}


def _twin_logits(twin: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return twin(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _images(batch: int = 4, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize('tiny_config, kind', REFERENCE_MODELS)
def test_reference_weights_give_the_twins_logits(tiny_config, kind):
  config = tiny_config(kind)
  twin = _twin(config)
  model = convert.model_from_torch(_state_dict(twin), config)
  images = _images()
  np.testing.assert_allclose(
    np.asarray(model(images)), _twin_logits(twin, images), rtol=0, atol=1e-4
  )


@pytest.mark.parametrize('tiny_config, kind', REFERENCE_MODELS)
def test_flax_weights_load_into_the_twin(tiny_config, kind):
  config = tiny_config(kind)
  model = build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(1))
  variables = export.flat_variables(model)
  # ELM weights start at zero; random ones make the mask matter.
  rng = np.random.default_rng(2)
  for name, value in variables.items():
    if name.endswith('mask.weight'):
      variables[name] = rng.normal(size=value.shape).astype(np.float32)
  export.set_flat_variables(model, variables)
  state_dict = convert.torch_from_variables(variables, config)
  twin = build_torch_model(config.model, num_classes=10, image_size=32, channels=3).eval()
  twin.load_state_dict({k: torch.tensor(v) for k, v in state_dict.items()}, strict=True)
  images = _images(seed=1)
  np.testing.assert_allclose(
    _twin_logits(twin, images), np.asarray(model(images)), rtol=0, atol=1e-4
  )
  back = convert.model_from_torch(state_dict, config)
  for name, value in export.flat_variables(back).items():
    np.testing.assert_array_equal(value, variables[name])


def test_qkv_split_and_transposes():
  config = tiny_vit_config('gmm', depth=1)
  state_dict = _state_dict(_twin(config))
  variables = export.flat_variables(convert.model_from_torch(state_dict, config))
  qkv = state_dict['transformer.layers.0.0.fn.to_qkv.weight']
  inner = 4 * 8
  for i, name in enumerate(['query', 'score.key', 'value']):
    np.testing.assert_array_equal(
      variables[f'blocks.0.attention.{name}.kernel'], qkv[i * inner : (i + 1) * inner].T
    )
  np.testing.assert_array_equal(
    variables['blocks.0.attention.mask.sigma'],
    state_dict['transformer.layers.0.0.fn.mask.sigma'][:, :, 0, 0],
  )
  np.testing.assert_array_equal(variables['pos_embed'], state_dict['pos_embedding'][0])
  np.testing.assert_array_equal(variables['head.kernel'], state_dict['mlp_head.1.weight'].T)


def test_swin_conv_qkv_and_bias_table():
  config = tiny_swin_config('gmm')
  state_dict = _state_dict(_twin(config))
  variables = export.flat_variables(convert.model_from_torch(state_dict, config))
  np.testing.assert_array_equal(
    variables['patch_embed.kernel'], np.einsum('oihw->hwio', state_dict['patch_embed.proj.weight'])
  )
  np.testing.assert_array_equal(
    variables['patch_norm.scale'], state_dict['patch_embed.norm.weight']
  )
  np.testing.assert_array_equal(variables['pos_embed'], state_dict['absolute_pos_embed'][0])
  ours, theirs = 'stages.1.blocks.1.attention', 'layers.1.blocks.1.attn'
  weight, bias = state_dict[f'{theirs}.qkv.weight'], state_dict[f'{theirs}.qkv.bias']
  width = 16
  for i, name in enumerate(['query', 'score.key', 'value']):
    rows = slice(i * width, (i + 1) * width)
    np.testing.assert_array_equal(variables[f'{ours}.mha.{name}.kernel'], weight[rows].T)
    np.testing.assert_array_equal(variables[f'{ours}.mha.{name}.bias'], bias[rows])
  np.testing.assert_array_equal(
    variables[f'{ours}.relative_position_bias'],
    state_dict[f'{theirs}.relative_position_bias_table'],
  )
  np.testing.assert_array_equal(
    variables[f'{ours}.mha.mask.alpha'], state_dict[f'{theirs}.mask.alpha'][:, :, 0, 0]
  )
  np.testing.assert_array_equal(
    variables['stages.0.downsample.reduction.kernel'],
    state_dict['layers.0.downsample.reduction.weight'].T,
  )


@pytest.mark.parametrize('kind, mask_param', [('gmm', 'mask.alpha'), ('elm', 'mask.weight')])
def test_cait_conversion_where_the_mask_matters(kind, mask_param):
  """Weights drawn so every tensor moves the logits by O(1): the converted CaiT gives the
  twin's logits to 1e-4, and zeroing its masks moves them by over a thousand times that."""
  config = tiny_cait_config(kind)
  twin = strong_twin(config)
  # LayerScale at 1 rather than drawn: a patch layer's change then reaches the class
  # attention, which averages it over the 64 patches, undamped.
  with torch.no_grad():
    for name, value in twin.named_parameters():
      if name.endswith('.scale'):
        value.fill_(1.0)
  model = convert.model_from_torch(_state_dict(twin), config)
  images = _images()
  expected = _twin_logits(twin, images)
  assert np.abs(expected).max() > 0.3
  np.testing.assert_allclose(np.asarray(model(images)), expected, rtol=0, atol=1e-4)
  variables = export.flat_variables(model)
  zeroed = {
    name: np.zeros_like(value) if name.endswith(mask_param) else value
    for name, value in variables.items()
  }
  assert sum(name.endswith(mask_param) for name in zeroed) == config.model.depth
  export.set_flat_variables(model, zeroed)
  assert np.abs(np.asarray(model(images)) - expected).max() > 0.1


def test_cait_kv_split_talking_heads_and_layer_scale():
  config = tiny_cait_config('gmm')
  state_dict = _state_dict(_twin(config))
  variables = export.flat_variables(convert.model_from_torch(state_dict, config))
  for ours, theirs in [
    ('patch_layers.1', 'patch_transformer.layers.1'),
    ('class_layers.0', 'cls_transformer.layers.0'),
  ]:
    attention = f'{theirs}.0.fn.fn'
    kv = state_dict[f'{attention}.to_kv.weight']
    inner = 2 * 8
    np.testing.assert_array_equal(variables[f'{ours}.attention.score.key.kernel'], kv[:inner].T)
    np.testing.assert_array_equal(variables[f'{ours}.attention.value.kernel'], kv[inner:].T)
    np.testing.assert_array_equal(
      variables[f'{ours}.attention.query.kernel'], state_dict[f'{attention}.to_q.weight'].T
    )
    # Both sides mix heads as out[g] = sum_h in[h] w[h, g]: no transpose.
    np.testing.assert_array_equal(
      variables[f'{ours}.attention.pre_softmax.kernel'],
      state_dict[f'{attention}.mix_heads_pre_attn'],
    )
    np.testing.assert_array_equal(
      variables[f'{ours}.attention.post_softmax.kernel'],
      state_dict[f'{attention}.mix_heads_post_attn'],
    )
    np.testing.assert_array_equal(
      variables[f'{ours}.mlp_scale'], state_dict[f'{theirs}.1.scale'][0, 0]
    )
    np.testing.assert_array_equal(
      variables[f'{ours}.mlp.fc2.kernel'], state_dict[f'{theirs}.1.fn.fn.net.3.weight'].T
    )
  np.testing.assert_array_equal(variables['cls_token'], state_dict['cls_token'][0, 0])
  assert not any(name.startswith('class_layers') and '.mask.' in name for name in variables)


@pytest.mark.parametrize(
  'tiny_config, kind, qkv_bias',
  [
    (tiny_swin_config, 'none', False),
    (tiny_swin_config, 'gmm', True),
    (tiny_cait_config, 'none', False),
    (tiny_cait_config, 'elm', False),
  ],
)
def test_mapping_names_every_twin_key(tiny_config, kind, qkv_bias):
  config = tiny_config(kind)
  config.model.attention.qkv_bias = qkv_bias
  twin = build_torch_model(config.model, num_classes=10, image_size=32, channels=3)
  keys = convert.reference_mapping(config).torch_keys()
  assert sorted(keys) == sorted(twin.state_dict())


def test_swin_constants_are_checked():
  config = tiny_swin_config('none')
  state_dict = _state_dict(_twin(config))
  state_dict['layers.0.blocks.1.attn_mask'] = np.zeros_like(
    state_dict['layers.0.blocks.1.attn_mask']
  )
  with pytest.raises(ValueError, match="torch 'layers.0.blocks.1.attn_mask'"):
    convert.model_from_torch(state_dict, config)


def test_swin_elm_has_no_reference_weights():
  with pytest.raises(ValueError, match="model.mask.kind='elm'"):
    convert.reference_mapping(tiny_swin_config('elm'))


def test_full_size_cifar_gmm_vit():
  config = gmm_vit_cifar10.get_config()
  twin = _twin(config)
  model = convert.model_from_torch(_state_dict(twin), config)
  images = _images(batch=2, seed=3)
  np.testing.assert_allclose(
    np.asarray(model(images)), _twin_logits(twin, images), rtol=0, atol=1e-4
  )


def test_missing_and_unexpected_keys_are_named():
  config = tiny_vit_config('gmm')
  state_dict = _state_dict(_twin(config))
  del state_dict['mlp_head.1.bias']
  state_dict['extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(
    ValueError,
    match=r"missing \['mlp_head.1.bias'\], unexpected "
    r"\['extra.weight'\]",
  ):
    convert.model_from_torch(state_dict, config)


def test_state_dict_of_another_depth_is_rejected():
  state_dict = _state_dict(_twin(tiny_vit_config('gmm', depth=1)))
  with pytest.raises(ValueError, match='missing'):
    convert.model_from_torch(state_dict, tiny_vit_config('gmm', depth=2))


def test_state_dict_of_another_width_names_the_tensor():
  state_dict = _state_dict(_twin(tiny_vit_config('none')))
  config = tiny_vit_config('none')
  config.model.head_dim = 16
  with pytest.raises(ValueError, match='to_qkv.weight'):
    convert.model_from_torch(state_dict, config)


def test_state_dict_of_another_patch_size_is_rejected():
  twin_config = tiny_vit_config('gmm')
  twin_config.model.patch_size = 8
  state_dict = _state_dict(_twin(twin_config))
  with pytest.raises(ValueError, match="torch 'mask'"):
    convert.model_from_torch(state_dict, tiny_vit_config('gmm'))


def test_additive_mask_has_no_reference_weights():
  config = tiny_vit_config('gmm')
  config.model.mask.mode = 'add'
  with pytest.raises(ValueError, match='model.mask.mode'):
    convert.reference_mapping(config)


def test_backbone_without_mapping_is_rejected():
  config = tiny_vit_config('gmm')
  config.model.name = 'resnet'
  with pytest.raises(ValueError, match='model.name'):
    convert.reference_mapping(config)


def test_cli_and_reverse_round_trip(tmp_path):
  config = tiny_vit_config('gmm')
  twin = _twin(config)
  pth = tmp_path / 'checkpoint.pth'
  # A reference training checkpoint wraps the weights with optimizer state.
  torch.save({'model_state_dict': twin.state_dict(), 'epoch': 3}, pth)
  bundle_dir, back = tmp_path / 'bundle', tmp_path / 'back.pth'
  tiny = [
    f'--config.model.{k}={config.model[k]}' for k in ('depth', 'dim', 'num_heads', 'head_dim')
  ]
  subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.convert',
      'torch-reference',
      '--config=configs/gmm_vit_cifar10.py',
      *tiny,
      f'--state_dict={pth}',
      f'--out={bundle_dir}',
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
  )
  bundle = export.load(str(bundle_dir))
  images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  normalized = np.asarray(normalize(images, bundle.preprocess['mean'], bundle.preprocess['std']))
  np.testing.assert_allclose(
    bundle.predict(images), _twin_logits(twin, normalized), rtol=0, atol=1e-4
  )

  convert.bundle_to_reference(str(bundle_dir), str(back))
  loaded = build_torch_model(config.model, num_classes=10, image_size=32, channels=3).eval()
  loaded.load_state_dict(torch.load(back, weights_only=True), strict=True)
  for key, value in twin.state_dict().items():
    torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
