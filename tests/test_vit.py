"""The attention module and the small-dataset ViT against NumPy and the reference's counts."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import vit_cifar10
from gmm_vit_jax.attention import grid
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.tokens import patchify
from tests.model_testing import count_params, random_batch, train_losses


def numpy_attention(x, wq, wk, wv, wo, bo, heads, mask=None, mode='multiply'):
  """Softmax attention written out in float64: per head, (x Wq)(x Wk)^T / sqrt(d), mask, softmax."""
  b, n, _ = x.shape
  d = wq.shape[1] // heads
  out = np.zeros((b, n, wq.shape[1]))
  for h in range(heads):
    sl = slice(h * d, (h + 1) * d)
    s = np.einsum('bid,bjd->bij', x @ wq[:, sl], x @ wk[:, sl]) / np.sqrt(d)
    if mask is not None:
      s = s * mask[h] if mode == 'multiply' else s + mask[h]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, :, sl] = p @ (x @ wv[:, sl])
  return out @ wo + bo


def tiny_model(kind, pool, **overrides):
  cfg = vit_cifar10.model(kind)
  cfg.update(dict(dim=16, depth=2, num_heads=2, head_dim=8, pool=pool), **overrides)
  return build_model(cfg, num_classes=10, image_size=16, channels=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('kind,mode', [('none', 'multiply'), ('gmm', 'multiply'), ('gmm', 'add')])
def test_attention_matches_numpy(kind, mode):
  model = tiny_model(kind, 'mean')
  attn = model.blocks[0].attention
  if kind == 'gmm':
    attn.mask.mode = mode
  x = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
  coords = jnp.asarray(grid.grid_coords(4, 4))
  mask = None if kind == 'none' else np.asarray(attn.mask.values(coords), np.float64)
  w = lambda lin: np.asarray(lin.kernel[...], np.float64)
  expected = numpy_attention(
    x.astype(np.float64),
    w(attn.query),
    w(attn.score.key),
    w(attn.value),
    w(attn.out),
    np.asarray(attn.out.bias[...]),
    2,
    mask,
    mode,
  )
  np.testing.assert_allclose(attn(jnp.asarray(x), coords), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  'kind,pool,expected', [('none', 'cls', 2_692_426), ('gmm', 'mean', 2_693_122)]
)
def test_parameter_counts_equal_the_reference(kind, pool, expected):
  cfg = vit_cifar10.model(kind)
  model = nnx.eval_shape(
    lambda: build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  )
  assert cfg.pool == pool
  assert count_params(model) == expected


def test_patchify_order_is_p1_p2_c():
  images = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  out = np.asarray(patchify(jnp.asarray(images), 4))
  # Patch (row 1, col 0) of example 1: pixels images[1, 4:8, 0:4, :] flattened (p1, p2, c).
  np.testing.assert_array_equal(out[1, 2], images[1, 4:8, 0:4, :].reshape(-1))


@pytest.mark.parametrize('pool', ['cls', 'mean'])
def test_keeping_every_token_is_the_full_model(pool):
  model = tiny_model('gmm', pool)
  images, _ = random_batch(2, 16)
  every = jnp.tile(jnp.arange(16)[None], (2, 1))
  np.testing.assert_allclose(model(images, token_index=every), model(images), rtol=1e-5, atol=1e-5)


def test_dropped_tokens_leave_the_sequence_and_keep_their_coordinates():
  model = tiny_model('gmm', 'mean', depth=1)
  images, _ = random_batch(2, 16)
  keep = jnp.asarray([[0, 3, 5, 10, 15], [1, 2, 7, 8, 9]])
  attn = model.blocks[0].attention
  seen = {}
  source, grid_mask = attn.key_source, attn.grid_mask

  def spy_source(x, context):
    seen['tokens'] = x.shape
    return source(x, context)

  def spy_mask(coords):
    seen['coords'] = np.asarray(coords)
    return grid_mask(coords)

  attn.key_source, attn.grid_mask = spy_source, spy_mask
  model(images, token_index=keep)
  assert seen['tokens'] == (2, 5, 16)
  np.testing.assert_array_equal(seen['coords'], grid.grid_coords(4, 4)[np.asarray(keep)])


def test_patch_size_must_divide_the_image():
  cfg = vit_cifar10.model('gmm')
  cfg.patch_size = 5
  with pytest.raises(ValueError, match='model.patch_size=5'):
    build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('field,value', [('name', 'resnet'), ('pool', 'max'), ('dtype', 'fp8')])
def test_bad_model_settings_name_the_field(field, value):
  cfg = vit_cifar10.model('gmm')
  cfg[field] = value
  with pytest.raises(ValueError, match=f'model.{field}'):
    build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('kind', ['none', 'gmm', 'elm'])
def test_a_few_steps_lower_the_loss(kind):
  model = tiny_model(kind, 'cls' if kind == 'none' else 'mean')
  images, labels = random_batch(8, 16)
  losses = train_losses(model, images, labels, steps=8, learning_rate=3e-3)
  assert losses[-1] < losses[0]
