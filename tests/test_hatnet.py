"""HAT-Net: windows, H-MHSA against NumPy, HAT-Net-Tiny's size, config checks, learning."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common, gmm_hatnet_cifar10, hatnet_cifar10
from gmm_vit_jax.initializers import reinit_kernels
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.hatnet import HierarchicalAttention, window_merge, window_partition
from tests.model_testing import count_params, random_batch, train_losses

pytestmark = pytest.mark.usefixtures('quick_compiles')


def tiny_config(mask_kind: str):
  """16x16 images, stride-2 stem: an 8x8 stage with 2x2 windows pooled to 4x4, then 4x4 global."""
  config = hatnet_cifar10.model(mask_kind, 'cifar10')
  config.update(
    dims=(8, 16),
    head_dim=4,
    depths=(1, 1),
    expansions=(2, 2),
    kernel_sizes=(3, 3),
    grid_sizes=(2, 1),
    ds_ratios=(2, 1),
    stochastic_depth=0.0,
    head_dropout=0.0,
  )
  return config


@functools.cache
def tiny_model(mask_kind: str):
  return build_model(
    tiny_config(mask_kind), num_classes=10, image_size=16, channels=3, rngs=nnx.Rngs(0)
  )


def test_window_partition_and_merge():
  b, h, w, c, g = 2, 4, 6, 3, 2
  x = np.random.default_rng(0).normal(size=(b, h, w, c)).astype(np.float32)
  windows = np.asarray(window_partition(jnp.asarray(x), g))
  assert windows.shape == (b * (h // g) * (w // g), g * g, c)
  for bi in range(b):
    for wy in range(h // g):
      for wx in range(w // g):
        for i in range(g):
          for j in range(g):
            index = (bi * (h // g) + wy) * (w // g) + wx
            np.testing.assert_array_equal(windows[index, i * g + j], x[bi, wy * g + i, wx * g + j])
  np.testing.assert_array_equal(window_merge(jnp.asarray(windows), h, w), x)


def weights(param):
  return np.asarray(param[...], np.float64)


def linear(x, layer):
  return x @ weights(layer.kernel) + weights(layer.bias)


def group_norm(x, norm):
  """GroupNorm(1, C) on (B, H, W, C): statistics over each example's whole map."""
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  var = x.var(axis=(1, 2, 3), keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * weights(norm.scale) + weights(norm.bias)


def gmm_mask(mask, g):
  """(H, g*g, g*g): the GMM paper's sum_k alpha exp(-d2 / (2 (sigma^2 + 1e-5))) on a g x g
  window, zero from d2 = 104."""
  r, c = np.divmod(np.arange(g * g), g)
  d2 = (r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2
  sigma, alpha = weights(mask.sigma), weights(mask.alpha)  # (K, H)
  kern = np.exp(-d2[None, None] / (2 * (sigma[..., None, None] ** 2 + 1e-5)))
  return (alpha[..., None, None] * np.where(d2 < 104, kern, 0.0)).sum(0)


def softmax_attention(q, k, v, heads, multiplier=None):
  """(B, N, C), (B, M, C), (B, M, C) -> (B, N, C), scale 1/sqrt(C / heads); the scaled
  logits of head h times multiplier[h] (N, M) when given."""
  d = q.shape[-1] // heads
  out = np.zeros_like(q)
  for h in range(heads):
    sl = slice(h * d, (h + 1) * d)
    s = np.einsum('bid,bjd->bij', q[..., sl], k[..., sl]) / np.sqrt(d)
    if multiplier is not None:
      s = s * multiplier[h]
    p = np.exp(s - s.max(-1, keepdims=True))
    out[..., sl] = (p / p.sum(-1, keepdims=True)) @ v[..., sl]
  return out


def numpy_hmhsa(x, m, grid_size, ratio, heads):
  b, h, w, c = x.shape
  g = grid_size if grid_size > 1 else h
  a = m.attention
  multiplier = None if a.mask is None else gmm_mask(a.mask, g)
  normed = group_norm(x, m.norm)
  local = np.zeros_like(x)
  for wy in range(h // g):
    for wx in range(w // g):
      win = normed[:, wy * g : (wy + 1) * g, wx * g : (wx + 1) * g].reshape(b, g * g, c)
      out = softmax_attention(
        linear(win, a.query), linear(win, a.score.key), linear(win, a.value), heads, multiplier
      )
      local[:, wy * g : (wy + 1) * g, wx * g : (wx + 1) * g] = out.reshape(b, g, g, c)
  if grid_size == 1:
    return linear(local, m.proj)
  local = group_norm(x + local, m.grid_norm)
  pooled = np.zeros((b, h // ratio, w // ratio, c))
  for i in range(h // ratio):
    for j in range(w // ratio):
      pooled[:, i, j] = local[:, i * ratio : (i + 1) * ratio, j * ratio : (j + 1) * ratio].mean(
        (1, 2)
      )
  pooled = group_norm(pooled, m.pool_norm).reshape(b, -1, c)
  out = softmax_attention(
    linear(local.reshape(b, h * w, c), m.global_query),
    linear(pooled, m.global_key),
    linear(pooled, m.global_value),
    heads,
  )
  return linear(out.reshape(b, h, w, c) + local, m.proj)


@pytest.mark.parametrize(
  'stage, side, grid_size, ratio, heads',
  [
    (0, 8, 2, 2, 2),  # 2x2 windows, keys from the 4x4 pooled map.
    (1, 4, 1, 1, 4),  # One MHSA over the whole map.
  ],
)
def test_hierarchical_attention_matches_numpy(stage, side, grid_size, ratio, heads):
  m = tiny_model('none').stages[stage][0].attention
  dim = heads * 4
  # Non-zero mean and scale, so the GroupNorms matter.
  x = 1.5 + 2.0 * np.random.default_rng(stage).normal(size=(2, side, side, dim))
  out = nnx.jit(lambda a, t: a(t))(m, x.astype(np.float32))
  np.testing.assert_allclose(out, numpy_hmhsa(x, m, grid_size, ratio, heads), rtol=1e-4, atol=1e-4)


def test_cifar_third_stage_block_matches_numpy():
  """The CIFAR HAT-Net's third-stage geometry with GMM: a 4x4 map in four 2x2 windows
  (GMM on each window's grid), queries at every position attending to the unpooled map."""
  config = hatnet_cifar10.model('gmm', 'cifar10')
  side, grid_size, ratio = 4, config.grid_sizes[2], config.ds_ratios[2]
  assert (grid_size, ratio) == (2, 1)
  heads, dim = 2, 8
  m = HierarchicalAttention(
    dim,
    head_dim=dim // heads,
    side=side,
    grid_size=grid_size,
    ds_ratio=ratio,
    dropout=0.0,
    attention=config.attention,
    mask=config.mask,
    dtype=jnp.float32,
    rngs=nnx.Rngs(3),
  )
  # Kernels drawn with variance 4 / fan_in rather than HAT-Net's std 0.02: logits of
  # order 1, so that the mask matters.
  reinit_kernels(m, nnx.initializers.variance_scaling(4.0, 'fan_in', 'normal'), nnx.Rngs(4))
  x = 1.5 + 2.0 * np.random.default_rng(7).normal(size=(2, side, side, dim))
  out = nnx.jit(lambda a, t: a(t))(m, x.astype(np.float32))
  expected = numpy_hmhsa(x, m, grid_size, ratio, heads)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  # The mask matters: the same block without it is another function.
  unmasked = HierarchicalAttention(
    dim,
    head_dim=dim // heads,
    side=side,
    grid_size=grid_size,
    ds_ratio=ratio,
    dropout=0.0,
    attention=config.attention,
    mask=hatnet_cifar10.model('none', 'cifar10').mask,
    dtype=jnp.float32,
    rngs=nnx.Rngs(3),
  )
  nnx.update(unmasked, nnx.state(m, nnx.Not(nnx.PathContains('mask'))))
  assert np.abs(np.asarray(unmasked(x.astype(np.float32))) - expected).max() > 0.1


def test_hatnet_tiny_has_12_7m_parameters():
  config = hatnet_cifar10.imagenet_tiny('none')
  model = nnx.eval_shape(
    lambda: build_model(config, num_classes=1000, image_size=224, channels=3, rngs=nnx.Rngs(0))
  )
  assert round(count_params(model) / 1e6, 1) == 12.7


def test_gmm_adds_two_scalars_per_kernel_and_head():
  config = tiny_config('gmm')
  heads = [d // config.head_dim for d in config.dims]
  extra = sum(2 * config.mask.num_kernels * h * n for h, n in zip(heads, config.depths))
  assert count_params(tiny_model('gmm')) - count_params(tiny_model('none')) == extra


def test_cifar_configs():
  config = gmm_hatnet_cifar10.get_config()
  model = nnx.eval_shape(
    lambda: build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  )
  assert [blocks[0].attention.window for blocks in model.stages] == [4, 4, 2, 2]
  assert hatnet_cifar10.get_config('cifar100').model.mask.kind == 'none'
  assert hatnet_cifar10.get_config(common.TINY_IMAGENET).model.stem_strides == (2, 2)


@pytest.mark.parametrize(
  'field, value',
  [
    ('grid_sizes', (3, 1)),
    ('ds_ratios', (3, 1)),
    ('depths', (1,)),
    ('head_dim', 3),
    ('stem_strides', (2,)),
  ],
)
def test_bad_stage_settings_are_refused(field, value):
  config = tiny_config('none')
  config[field] = value
  with pytest.raises(ValueError, match=f'model.{field}'):
    nnx.eval_shape(
      lambda: build_model(config, num_classes=10, image_size=16, channels=3, rngs=nnx.Rngs(0))
    )


def test_kernels_are_drawn_with_std_002():
  kernels = [
    np.ravel(m.kernel[...])
    for _, m in nnx.iter_modules(tiny_model('none'))
    if isinstance(m, (nnx.Linear, nnx.Conv))
  ]
  np.testing.assert_allclose(np.std(np.concatenate(kernels)), 0.02, rtol=0.1)


@pytest.mark.parametrize('mask_kind', ['none', 'gmm', 'elm'])
def test_forward_shape(mask_kind):
  images, _ = random_batch(2, 16)
  logits = nnx.jit(lambda m, x: m(x))(tiny_model(mask_kind), images)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))


def test_token_index_is_refused():
  images, _ = random_batch(2, 16)
  with pytest.raises(ValueError, match='cannot drop tokens'):
    tiny_model('none')(images, token_index=jnp.zeros((2, 4), jnp.int32))


def test_a_few_steps_lower_the_loss():
  images, labels = random_batch(8, 16)
  losses = train_losses(tiny_model('gmm'), images, labels, steps=10, learning_rate=3e-3)
  assert losses[-1] < losses[0]
