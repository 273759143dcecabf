"""bfloat16 compute with float32 parameters: the `model.dtype` switch."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs
from gmm_vit_jax.models import build_model, compute_dtype
from tests.model_testing import (
  random_batch,
  tiny_cait_config,
  tiny_swin_config,
  tiny_vit_config,
  train_losses,
)


def test_auto_is_float32_on_a_cpu():
  assert jax.default_backend() == 'cpu'
  assert compute_dtype('auto') == 'float32'
  assert compute_dtype('bfloat16') == 'bfloat16'
  with pytest.raises(ValueError, match='model.dtype'):
    compute_dtype('float16')


@pytest.mark.parametrize('tiny_config', [tiny_vit_config, tiny_swin_config, tiny_cait_config])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(tiny_config):
  images, _ = random_batch(2, 32)
  logits = {}
  for dtype in ('float32', 'bfloat16'):
    cfg = tiny_config('gmm').model
    cfg.dtype = dtype
    model = build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    logits[dtype] = nnx.jit(lambda m, x: m(x))(model, images)  # Eager Swin takes minutes.
  # bfloat16 keeps 8 bits of mantissa: the same function to about 1%, but not exactly.
  error = np.abs(np.asarray(logits['bfloat16'], np.float32) - logits['float32'])
  assert 0 < error.max() < 0.05 * np.abs(logits['float32']).max() + 0.02, error.max()


def test_bfloat16_model_learns():
  images, labels = random_batch(8, 32, seed=3)
  cfg = tiny_vit_config('gmm').model
  cfg.dtype = 'bfloat16'
  model = build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  losses = train_losses(model, images, labels, steps=30, learning_rate=3e-3)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_paper_configs_train_in_float32_and_bfloat16_is_one_switch():
  """The table's configs state float32, whatever the backend; one override gives bfloat16."""
  names = [p.stem for p in pathlib.Path(configs.__file__).parent.glob('*_cifar10.py')]
  assert len(names) >= 12
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    assert config.model.dtype == 'float32', name
    assert compute_dtype(config.model.dtype) == 'float32'
    config.model.dtype = 'bfloat16'
    assert compute_dtype(config.model.dtype) == 'bfloat16'
