"""PiT: the reference's parameter counts, shapes, the CLS row and column, pooling, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import gmm_pit_cifar10, pit_cifar10
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.pit import Pool
from tests.model_testing import count_params, random_batch, train_losses

pytestmark = pytest.mark.usefixtures('quick_compiles')


@functools.cache
def tiny_model(mask_kind: str):
  """8x8 images, patch 2: a 4x4 grid, then 2x2 after the pooling. Tests only read it."""
  config = pit_cifar10.model(mask_kind, 'cifar10')
  config.update(dim=8, depths=(1, 1), num_heads=(2, 2), head_dim=4, stochastic_depth=0.0)
  return build_model(config, num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  'get_config, expected',
  [
    (pit_cifar10.get_config, 6_972_586),
    (gmm_pit_cifar10.get_config, 6_973_186),
  ],
)
def test_parameter_count_matches_reference(get_config, expected):
  config = get_config()
  model = nnx.eval_shape(
    lambda: build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  )
  assert model.sides == (16, 8, 4)
  assert count_params(model) == expected


def test_tiny_imagenet_keeps_the_token_grids():
  config = pit_cifar10.get_config('tiny_imagenet')
  assert config.model.patch_size == 4
  model = nnx.eval_shape(
    lambda: build_model(config.model, num_classes=200, image_size=64, channels=3, rngs=nnx.Rngs(0))
  )
  assert model.sides == (16, 8, 4)


@pytest.mark.parametrize('mask_kind', ['none', 'gmm', 'elm'])
def test_forward_shape(mask_kind):
  model = tiny_model(mask_kind)
  images, _ = random_batch(2, 8)
  logits = nnx.jit(lambda m, x: m(x))(model, images)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))


def test_token_index_is_refused():
  model = tiny_model('none')
  images, _ = random_batch(2, 8)
  with pytest.raises(ValueError, match='cannot drop tokens'):
    model(images, token_index=jnp.zeros((2, 4), jnp.int32))


def numpy_gmm(sigma, alpha, side):
  """(H, N, N) sum_k alpha exp(-d2 / (2 (sigma^2 + 1e-5))) on a side x side grid."""
  rows, cols = np.divmod(np.arange(side * side), side)
  d2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
  var = sigma.astype(np.float64) ** 2 + 1e-5
  return np.sum(
    alpha[:, :, None, None] * np.exp(-d2[None, None] / (2 * var[:, :, None, None])), axis=0
  )


@pytest.mark.parametrize('stage, side', [(0, 4), (1, 2)])
def test_mask_leaves_the_cls_row_and_column(stage, side):
  model = tiny_model('gmm')
  coords = np.asarray(model.stage_coords(stage))
  assert coords.shape == (1 + side * side, 2)
  np.testing.assert_array_equal(coords[0], [-1, -1])
  attention = model.stages[stage][0].attention
  n = 1 + side * side
  logits = jax.random.normal(jax.random.key(1), (2, 2, n, n))
  masked = np.asarray(nnx.jit(lambda a, l, c: a.mask(l, c))(attention, logits, coords))
  logits = np.asarray(logits)
  np.testing.assert_array_equal(masked[:, :, 0, :], logits[:, :, 0, :])
  np.testing.assert_array_equal(masked[:, :, :, 0], logits[:, :, :, 0])
  g = numpy_gmm(np.asarray(attention.mask.sigma[...]), np.asarray(attention.mask.alpha[...]), side)
  np.testing.assert_allclose(
    masked[:, :, 1:, 1:], logits[:, :, 1:, 1:] * g[None], rtol=1e-5, atol=1e-6
  )


def test_pool_matches_numpy():
  dim, side = 3, 4
  pool = Pool(dim, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 1 + side * side, dim)).astype(np.float32)
  out = np.asarray(nnx.jit(lambda p, t: p(t, side))(pool, x))

  dw = np.asarray(pool.depthwise.kernel[...])  # (3, 3, 1, 2C)
  dw_bias = np.asarray(pool.depthwise.bias[...])
  grid = np.pad(x[:, 1:].reshape(2, side, side, dim), ((0, 0), (1, 1), (1, 1), (0, 0)))
  out_side = side // 2
  conv = np.zeros((2, out_side, out_side, 2 * dim))
  for o in range(2 * dim):
    c = o // 2  # Channel multiplier 2: outputs 2c and 2c + 1 read input channel c.
    for y in range(out_side):
      for xx in range(out_side):
        patch = grid[:, 2 * y : 2 * y + 3, 2 * xx : 2 * xx + 3, c]
        conv[:, y, xx, o] = np.sum(patch * dw[:, :, 0, o], axis=(1, 2)) + dw_bias[o]
  tokens = conv.reshape(2, -1, 2 * dim) @ np.asarray(pool.pointwise.kernel[...]) + np.asarray(
    pool.pointwise.bias[...]
  )
  cls = x[:, :1] @ np.asarray(pool.cls.kernel[...]) + np.asarray(pool.cls.bias[...])
  np.testing.assert_allclose(out, np.concatenate([cls, tokens], axis=1), rtol=1e-5, atol=1e-5)


def test_a_few_steps_lower_the_loss():
  images, labels = random_batch(8, 8)
  losses = train_losses(tiny_model('gmm'), images, labels, steps=10, learning_rate=3e-3)
  assert losses[-1] < losses[0]
