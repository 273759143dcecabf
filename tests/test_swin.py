"""Swin: parameter counts, window geometry and shifted-window attention against NumPy."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common, gmm_swin_cifar10, swin_cifar10
from gmm_vit_jax.attention import make_attention
from gmm_vit_jax.attention.grid import grid_coords
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.swin import (
  PatchMerging,
  WindowAttention,
  relative_position_index,
  shift_mask,
  window_partition,
  window_reverse,
)
from tests.model_testing import count_params, random_batch, train_losses

# Trainable parameters of the reference code at 32x32, 10 classes, K=5, counted by building
# its models.
REFERENCE_PLAIN = 7_073_188
REFERENCE_GMM = 7_074_088


pytestmark = pytest.mark.usefixtures('quick_compiles')


def full_model(kind: str):
  """The paper's Swin at 32x32, built abstractly: shapes and static structure only."""
  config = swin_cifar10.get_config()
  config.model.mask.kind = kind
  return nnx.eval_shape(
    lambda: build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  )


def tiny_config(kind: str) -> ml_collections.ConfigDict:
  """8x8 images, patch 2: a 4x4 grid with a shifted 2x2-window stage, then a 2x2 stage."""
  return ml_collections.ConfigDict(
    dict(
      name='swin',
      patch_size=2,
      embed_dim=8,
      depths=(2, 2),
      num_heads=(1, 2),
      window_size=2,
      mlp_ratio=2,
      dropout=0.0,
      stochastic_depth=0.1,
      dtype='float32',
      attention=common.attention(qkv_bias=True),
      mask=common.mask(kind),
    )
  )


def tiny_model(kind: str):
  return build_model(tiny_config(kind), num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def plain():
  return full_model('none')


def test_parameter_counts_match_reference(plain):
  assert count_params(plain) == REFERENCE_PLAIN
  assert count_params(full_model('gmm')) == REFERENCE_GMM
  # ELM: one (N, N) matrix per block over the 4x4 window, 12 blocks.
  assert count_params(full_model('elm')) == REFERENCE_PLAIN + 12 * 16 * 16


def test_stage_geometry_and_stochastic_depth(plain):
  windows = [[blk.attention.window for blk in stage.blocks] for stage in plain.stages]
  shifts = [[blk.attention.shift for blk in stage.blocks] for stage in plain.stages]
  assert windows == [[4] * 2, [4] * 6, [4] * 4]
  # The last stage's 4x4 grid is one window, so it is never shifted.
  assert shifts == [[0, 2], [0, 2, 0, 2, 0, 2], [0, 0, 0, 0]]
  rates = [blk.drop_path_rate for stage in plain.stages for blk in stage.blocks]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 12))
  assert [s.downsample is not None for s in plain.stages] == [True, True, False]


@pytest.mark.parametrize('kind', ['none', 'elm'])
def test_output_shape_and_errors(kind):
  model = tiny_model(kind)
  images, _ = random_batch(3, 8)
  logits = nnx.jit(lambda m, x: m(x))(model, images)
  assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
  with pytest.raises(ValueError, match='cannot drop patches'):
    model(images, token_index=jnp.zeros((3, 4), jnp.int32))
  config = tiny_config(kind)
  config.window_size = 3
  with pytest.raises(ValueError, match='window_size=3'):
    nnx.eval_shape(
      lambda: build_model(config, num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))
    )


def test_configs():
  gmm = gmm_swin_cifar10.get_config()
  assert gmm.model.mask.kind == 'gmm' and gmm.model.patch_size == 2
  assert gmm.model.attention.qkv_bias
  assert swin_cifar10.get_config('cifar100').dataset.name == 'cifar100'
  # 64x64 images: double patch, same 16x16 token grid.
  assert swin_cifar10.get_config('tiny_imagenet').model.patch_size == 4


def test_training_lowers_loss():
  images, labels = random_batch(8, 8)
  losses = train_losses(tiny_model('gmm'), images, labels, steps=12, learning_rate=3e-3)
  assert losses[-1] < losses[0]


def test_window_partition_and_reverse():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
  windows = np.asarray(window_partition(jnp.asarray(x), 2))
  assert windows.shape == (2 * 2 * 3, 4, 3)
  for b in range(2):
    for wr in range(2):
      for wc in range(3):
        for a in range(2):
          for c in range(2):
            np.testing.assert_array_equal(
              windows[b * 6 + wr * 3 + wc, a * 2 + c], x[b, wr * 2 + a, wc * 2 + c]
            )
  np.testing.assert_array_equal(np.asarray(window_reverse(jnp.asarray(windows), 2, 4, 6)), x)


def test_relative_position_index():
  window = 3
  index = relative_position_index(window)
  coords = grid_coords(window, window)
  delta = coords[:, None] - coords[None, :]
  n = window * window
  for i in range(n):
    for j in range(n):
      same = np.all(delta == delta[i, j], axis=-1)
      np.testing.assert_array_equal(index == index[i, j], same)
  assert sorted(np.unique(index)) == list(range((2 * window - 1) ** 2))


def wrapped(position: int, shift: int, size: int) -> bool:
  """After rolling by -shift, does this row/column hold a token from the opposite border?"""
  return position + shift >= size


def np_shift_allowed(height, width, window, shift):
  """(nW, N, N) bool from the wrap rule: tokens attend iff they wrapped alike."""
  out = []
  for wr in range(height // window):
    for wc in range(width // window):
      cells = [(wr * window + a, wc * window + c) for a in range(window) for c in range(window)]
      out.append(
        [
          [
            wrapped(r1, shift, height) == wrapped(r2, shift, height)
            and wrapped(c1, shift, width) == wrapped(c2, shift, width)
            for r2, c2 in cells
          ]
          for r1, c1 in cells
        ]
      )
  return np.array(out)


@pytest.mark.parametrize('height,width,window,shift', [(4, 4, 2, 1), (8, 8, 4, 2), (8, 12, 4, 2)])
def test_shift_mask(height, width, window, shift):
  expected = np.where(np_shift_allowed(height, width, window, shift), 0.0, -100.0)
  np.testing.assert_array_equal(shift_mask(height, width, window, shift), expected)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def params_of(wa: WindowAttention):
  mha = wa.mha
  p = {
    name: (np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64))
    for name, layer in [('q', mha.query), ('k', mha.score.key), ('v', mha.value), ('o', mha.out)]
  }
  p['table'] = np.asarray(wa.relative_position_bias[...], np.float64)
  p['sigma'] = np.asarray(mha.mask.sigma[...], np.float64)
  p['alpha'] = np.asarray(mha.mask.alpha[...], np.float64)
  return p


def np_window_attention(x, p, *, window, shift, num_heads):
  """x (B, h, w, C) -> (output (B, h, w, C), weights (B*nW, H, N, N)) by explicit loops."""
  b_, h, w, c = x.shape
  d = c // num_heads
  xs = np.roll(x, (-shift, -shift), axis=(1, 2))
  out = np.zeros_like(xs)
  all_weights = []
  local = [(a, cc) for a in range(window) for cc in range(window)]
  n = len(local)
  sq = np.array([[(a1 - a2) ** 2 + (c1 - c2) ** 2 for a2, c2 in local] for a1, c1 in local])
  gmm = np.einsum(
    'kh,khij->hij',
    p['alpha'],
    np.exp(-sq[None, None] / (2 * (p['sigma'][..., None, None] ** 2 + 1e-5))),
  )
  rel = np.array(
    [
      [
        p['table'][(a1 - a2 + window - 1) * (2 * window - 1) + (c1 - c2 + window - 1)]
        for a2, c2 in local
      ]
      for a1, c1 in local
    ]
  ).transpose(2, 0, 1)
  for b in range(b_):
    for wr in range(h // window):
      for wc in range(w // window):
        cells = [(wr * window + a, wc * window + cc) for a, cc in local]
        t = np.stack([xs[b, r, cc] for r, cc in cells])
        q, k, v = [(t @ p[name][0] + p[name][1]).reshape(n, num_heads, d) for name in 'qkv']
        scores = np.einsum('ihd,jhd->hij', q, k) / np.sqrt(d)
        allowed = np.array(
          [
            [
              wrapped(r1, shift, h) == wrapped(r2, shift, h)
              and wrapped(c1, shift, w) == wrapped(c2, shift, w)
              for r2, c2 in cells
            ]
            for r1, c1 in cells
          ]
        )
        logits = gmm * scores + rel + np.where(allowed, 0.0, -100.0)
        weights = np_softmax(logits)
        all_weights.append(weights)
        o = np.einsum('hij,jhd->ihd', weights, v).reshape(n, c) @ p['o'][0] + p['o'][1]
        for (r, cc), row in zip(cells, o):
          out[b, r, cc] = row
  return np.roll(out, (shift, shift), axis=(1, 2)), np.stack(all_weights)


def window_attention(*, grid, window, shift, dim, num_heads, seed=0):
  rngs = nnx.Rngs(seed)
  mha = make_attention(
    common.attention(qkv_bias=True),
    common.mask('gmm'),
    dim=dim,
    num_heads=num_heads,
    head_dim=dim // num_heads,
    grid_shape=(window, window),
    dropout=0.0,
    dtype=jnp.float32,
    rngs=rngs,
  )
  wa = WindowAttention(
    mha, grid_shape=grid, window=window, shift=shift, num_heads=num_heads, rngs=rngs
  )
  rng = np.random.default_rng(seed)
  # Sizeable, varied values so that a misplaced term changes the result visibly.
  for layer in (mha.query, mha.score.key, mha.value, mha.out):
    layer.bias[...] = jnp.asarray(rng.normal(size=layer.bias.shape), jnp.float32)
  wa.relative_position_bias[...] = jnp.asarray(
    rng.normal(size=wa.relative_position_bias.shape), jnp.float32
  )
  mha.mask.sigma[...] = jnp.asarray(rng.uniform(0.5, 2.0, mha.mask.sigma.shape), jnp.float32)
  return wa


@pytest.mark.parametrize('grid,window,shift', [((4, 4), 2, 1), ((8, 8), 4, 2), ((4, 4), 2, 0)])
def test_window_attention_matches_numpy(grid, window, shift):
  dim, heads = 8, 2
  wa = window_attention(grid=grid, window=window, shift=shift, dim=dim, num_heads=heads)
  x = np.random.default_rng(1).normal(size=(2,) + grid + (dim,)).astype(np.float32)
  tokens = jnp.asarray(x.reshape(2, -1, dim))
  coords = jnp.asarray(grid_coords(window, window))
  expected_out, expected_weights = np_window_attention(
    x.astype(np.float64), params_of(wa), window=window, shift=shift, num_heads=heads
  )
  np.testing.assert_allclose(
    np.asarray(wa.attention_weights(tokens, coords)), expected_weights, rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(wa(tokens, coords)).reshape(x.shape), expected_out, rtol=1e-4, atol=1e-4
  )


def test_mask_multiplies_before_relative_bias():
  """With alpha = 0 the GMM multiplier is 0: q.k vanishes, the bias and shift mask stay."""
  window, shift, heads = 2, 1, 2
  wa = window_attention(grid=(4, 4), window=window, shift=shift, dim=8, num_heads=heads)
  wa.mha.mask.alpha[...] = jnp.zeros_like(wa.mha.mask.alpha[...])
  tokens = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 8)), jnp.float32)
  weights = np.asarray(wa.attention_weights(tokens, jnp.asarray(grid_coords(window, window))))
  table = np.asarray(wa.relative_position_bias[...])
  local = [(a, c) for a in range(window) for c in range(window)]
  rel = np.array(
    [[table[(a1 - a2 + 1) * 3 + (c1 - c2 + 1)] for a2, c2 in local] for a1, c1 in local]
  ).transpose(2, 0, 1)
  allowed = np_shift_allowed(4, 4, window, shift)
  expected = np_softmax(rel[None] + np.where(allowed, 0.0, -100.0)[:, None])
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)


def test_patch_merging_matches_numpy():
  rng = np.random.default_rng(3)
  merge = PatchMerging(2, grid_shape=(4, 4), dtype=jnp.float32, rngs=nnx.Rngs(0))
  merge.norm.scale[...] = jnp.asarray(rng.normal(size=8), jnp.float32)
  x = rng.normal(size=(2, 4, 4, 2))
  out = np.asarray(merge(jnp.asarray(x.reshape(2, 16, 2), jnp.float32)))
  expected = np.zeros((2, 4, 4))
  kernel = np.asarray(merge.reduction.kernel[...], np.float64)
  scale = np.asarray(merge.norm.scale[...], np.float64)
  for b in range(2):
    for r in range(2):
      for c in range(2):
        v = np.concatenate(
          [
            x[b, 2 * r, 2 * c],
            x[b, 2 * r + 1, 2 * c],
            x[b, 2 * r, 2 * c + 1],
            x[b, 2 * r + 1, 2 * c + 1],
          ]
        )
        v = (v - v.mean()) / np.sqrt(v.var() + 1e-5) * scale
        expected[b, r * 2 + c] = v @ kernel
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
