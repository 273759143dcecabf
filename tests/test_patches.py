"""The patch heuristic against NumPy, and the ViT's token_index path."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common, vit_cifar10
from gmm_vit_jax import patches
from gmm_vit_jax.attention import grid
from gmm_vit_jax.attention.masks import GaussianMixtureMask
from gmm_vit_jax.models import build_model
from gmm_vit_jax.patches import selection

PATCH = 2


def np_patches(images, p):
  """(B, H, W, C) -> (B, N, p*p, C) by explicit loops over the grid, row-major."""
  b, h, w, c = images.shape
  out = []
  for r in range(h // p):
    for col in range(w // p):
      out.append(images[:, r * p : (r + 1) * p, col * p : (col + 1) * p, :].reshape(b, p * p, c))
  return np.stack(out, axis=1)


def unit_images(seed=0, batch=3, size=8, channels=3):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, size, size, channels))
  special = [
    np.s_[0, :PATCH, :PATCH, :],
    np.s_[1, :PATCH, PATCH : 2 * PATCH, :],
    np.s_[2, PATCH : 2 * PATCH, :PATCH, :],
  ]
  for where, value in zip(special[:batch], [0.0, 0.6, 1.0]):  # black, flat, white patches
    images[where] = value
  return images.astype(np.float32)


def test_contrast():
  images = unit_images()
  px = np_patches(images.astype(np.float64), PATCH)
  top, low = px.max(axis=(2, 3)), px.min(axis=(2, 3))
  with np.errstate(divide='ignore', invalid='ignore'):
    expected = np.where(top + low > 0, (top - low + 1e-8) / (top + low), 0.0)
  got = patches.patch_scores(jnp.asarray(images), 'contrast', PATCH, entropy_bins=256)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  assert got[0, 0] == 0.0 and 0 < got[1, 1] < 1e-7


@pytest.mark.parametrize('bins', [1, 8, 256])
@pytest.mark.parametrize('levels', [False, True])
def test_entropy_is_the_histogram_entropy(bins, levels):
  """-sum p log2 p of each patch's histogram (np.histogram over [0, 1], channels pooled)."""
  images = unit_images()
  if levels:  # 8-bit intensities k / 255, as uint8 images give.
    images = np.round(images * 255) / 255
  px = np_patches(images.astype(np.float64), PATCH)
  expected = np.zeros(px.shape[:2])
  for b, n in np.ndindex(*px.shape[:2]):
    counts, _ = np.histogram(px[b, n], bins=bins, range=(0.0, 1.0))
    p = counts[counts > 0] / counts.sum()
    expected[b, n] = -(p * np.log2(p)).sum()
  got = patches.patch_scores(jnp.asarray(images, jnp.float32), 'entropy', PATCH, entropy_bins=bins)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Flat patches (black, grey, white) hold one bin; at most log2 of the P * C values.
  assert got[0, 0] == 0.0 and got[1, 1] == 0.0 and got[2, 4] == 0.0
  assert np.all(np.asarray(got) <= np.log2(min(bins, PATCH * PATCH * 3)) + 1e-5)
  if bins == 256:
    assert np.asarray(got).max() > 3.0


def test_entropy_bins_is_checked():
  config = cfg(kind='entropy', entropy_bins=0)
  with pytest.raises(ValueError, match='patch_selection.entropy_bins'):
    selection.select_tokens(jnp.zeros((1, 8, 8, 3)), jax.random.key(0), config, patch_size=PATCH)


def test_variance():
  images = unit_images()
  px = np_patches(images.astype(np.float64), PATCH)
  got = patches.patch_scores(jnp.asarray(images), 'variance', PATCH, entropy_bins=256)
  np.testing.assert_allclose(got, px.var(axis=2).mean(axis=-1), rtol=1e-5, atol=1e-8)


def test_random_scores_are_uniform_and_keyed():
  images = jnp.zeros((4, 8, 8, 3))
  a = patches.patch_scores(images, 'random', PATCH, jax.random.key(0), entropy_bins=256)
  b = patches.patch_scores(images, 'random', PATCH, jax.random.key(1), entropy_bins=256)
  assert a.shape == (4, 16) and np.all((a >= 0) & (a < 1))
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match='patch_selection.kind'):
    patches.patch_scores(images, 'edges', PATCH, entropy_bins=256)


def cfg(**kwargs):
  return common.patch_selection(**kwargs)


@pytest.mark.parametrize('keep', [1.0, 0.7, 0.5, 0.2])
def test_topk_selection_matches_numpy(keep):
  images = unit_images(seed=1, batch=4)
  got = patches.select_tokens(
    jnp.asarray(images),
    jax.random.key(0),
    cfg(kind='variance', keep=keep, selection='topk'),
    patch_size=PATCH,
  )
  var = np_patches(images.astype(np.float64), PATCH).var(axis=2).mean(-1)
  k = max(1, round(keep * 16))
  expected = np.sort(np.argsort(-var, axis=1, kind='stable')[:, :k], axis=1)
  assert got.dtype == jnp.int32 and got.shape == (4, k)
  np.testing.assert_array_equal(got, expected)


def np_inclusion_probabilities(weights, k):
  """P(subset) for k successive draws without replacement, probability ∝ weights."""
  n = len(weights)
  probs = {}
  for order in itertools.permutations(range(n), k):
    p, left = 1.0, weights.sum()
    for i in order:
      if left <= 0:
        p = 0.0
        break
      p *= weights[i] / left
      left -= weights[i]
    key = tuple(sorted(order))
    probs[key] = probs.get(key, 0.0) + p
  return probs


def subset_frequencies(index):
  counts = {}
  for row in np.asarray(index):
    counts[tuple(row)] = counts.get(tuple(row), 0) + 1
  return {k: v / len(index) for k, v in counts.items()}


def test_sampling_law_is_successive_draws_from_min_max_scores():
  scores = np.array([0.3, 1.3, 0.8, 2.3, 1.8])  # min-max: [0, .5, .25, 1, .75]
  weights = (scores - scores.min()) / (scores.max() - scores.min())
  k, draws = 3, 40000
  index = selection.sample_index(
    jnp.tile(jnp.asarray(scores, jnp.float32), (draws, 1)), k, jax.random.key(0)
  )
  assert np.all(np.diff(np.asarray(index), axis=1) > 0)
  freq = subset_frequencies(index)
  for subset, p in np_inclusion_probabilities(weights, k).items():
    se = np.sqrt(p * (1 - p) / draws) + 1e-12
    assert abs(freq.get(subset, 0.0) - p) <= 5 * se + 1e-9, (subset, freq.get(subset), p)
  assert 0 not in np.asarray(index)  # the lowest score has probability 0


def test_sampling_fills_from_zero_probability_patches_uniformly():
  scores = jnp.tile(jnp.asarray([0.0, 0.0, 0.0, 0.0, 1.0, 2.0]), (20000, 1))
  index = np.asarray(selection.sample_index(scores, 4, jax.random.key(1)))
  assert np.all(np.diff(index, axis=1) > 0)
  assert np.all((index == 4).any(axis=1) & (index == 5).any(axis=1))
  zero_rate = np.array([(index == i).any(axis=1).mean() for i in range(4)])
  np.testing.assert_allclose(zero_rate, 0.5, atol=0.02)


def test_equal_scores_sample_uniformly():
  index = np.asarray(selection.sample_index(jnp.ones((20000, 8)), 3, jax.random.key(2)))
  rate = np.array([(index == i).any(axis=1).mean() for i in range(8)])
  np.testing.assert_allclose(rate, 3 / 8, atol=0.02)


def test_select_tokens_sample_mode_and_config_errors():
  images = jnp.asarray(unit_images(seed=2, batch=5))
  got = patches.select_tokens(
    images, jax.random.key(3), cfg(kind='contrast', keep=0.5), patch_size=PATCH
  )
  assert got.shape == (5, 8) and got.dtype == jnp.int32
  assert np.all(np.diff(np.asarray(got), axis=1) > 0)
  every = patches.select_tokens(images, jax.random.key(3), cfg(kind='none'), patch_size=PATCH)
  np.testing.assert_array_equal(every, np.tile(np.arange(16), (5, 1)))
  for field, value in [
    ('kind', 'edges'),
    ('selection', 'best'),
    ('mode', 'blur'),
    ('keep', 0.0),
    ('keep', 1.5),
  ]:
    bad = cfg(kind='variance')
    bad[field] = value
    with pytest.raises(ValueError, match=f'patch_selection.{field}'):
      patches.select_tokens(images, jax.random.key(0), bad, patch_size=PATCH)
  with pytest.raises(ValueError, match='patch_size'):
    patches.select_tokens(images, jax.random.key(0), cfg(kind='variance'), patch_size=3)


def test_select_tokens_jits():
  config = cfg(kind='entropy', keep=0.7)
  fn = jax.jit(lambda x, key: patches.select_tokens(x, key, config, patch_size=PATCH))
  got = fn(jnp.asarray(unit_images()), jax.random.key(0))
  assert got.shape == (3, round(0.7 * 16))


def test_application_probability_decays_like_the_reference():
  config = cfg(kind='variance', probability=0.8, decay=0.1)
  expected, p = [], 0.8
  for epoch in range(6):
    if epoch:
      p = p / (1 + 0.1 * epoch)
    expected.append(p)
  got = [patches.application_probability(config, e) for e in range(6)]
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  assert patches.application_probability(cfg(kind='none', probability=1.0), 3) == 0.0
  assert patches.application_probability(cfg(kind='random', probability=1.0), 50) == 1.0
  with pytest.raises(ValueError, match='patch_selection.probability'):
    patches.application_probability(cfg(kind='variance', probability=1.2), 0)


def test_zero_mode_zeroes_dropped_pixels():
  images = unit_images(seed=4, batch=2) + 0.1
  index = jnp.asarray([[0, 5, 10, 15], [1, 2, 3, 12]], jnp.int32)
  got = np.asarray(patches.zero_dropped_patches(jnp.asarray(images), index, patch_size=PATCH))
  expected = np.zeros_like(images)
  for b in range(2):
    for t in np.asarray(index[b]):
      r, c = divmod(int(t), 4)
      sl = np.s_[b, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
      expected[sl] = images[sl]
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('channels', [1, 3])
def test_drawing_keeps_kept_patches_and_marks_dropped(channels):
  images = unit_images(seed=5, batch=3, channels=channels)
  index = np.asarray([[0, 1, 2, 3], [4, 8, 12, 15], [5, 6, 9, 10]])
  scale, border = 3, 2
  canvas = patches.draw_kept_patches(
    images, index, patch_size=PATCH, columns=2, scale=scale, border=border
  )
  tile = 8 * scale
  assert canvas.dtype == np.uint8 and canvas.shape == (
    2 * (tile + border) + border,
    2 * (tile + border) + border,
    3,
  )
  pixels = np.round(images * 255).astype(np.uint8)
  if channels == 1:
    pixels = np.repeat(pixels, 3, axis=-1)
  side = PATCH * scale
  for b in range(3):
    r0, c0 = border + (b // 2) * (tile + border), border + (b % 2) * (tile + border)
    for t in range(16):
      pr, pc = divmod(t, 4)
      drawn = canvas[r0 + pr * side : r0 + (pr + 1) * side, c0 + pc * side : c0 + (pc + 1) * side]
      source = np.repeat(
        np.repeat(
          pixels[b, pr * PATCH : (pr + 1) * PATCH, pc * PATCH : (pc + 1) * PATCH], scale, 0
        ),
        scale,
        1,
      )
      if t in index[b]:
        np.testing.assert_array_equal(drawn, source)
      else:
        hatched = np.all(drawn == patches.visualize.HATCH_COLOUR, axis=-1)
        assert hatched.any() and not hatched.all()
        assert np.all(drawn[~hatched] <= source[~hatched])
        assert np.any(drawn[~hatched] < source[~hatched])


# The ViT's token_index path.


def tiny_model(mask_kind: str, score: str = 'dot_product', depth: int = 2):
  model = vit_cifar10.model(mask_kind)
  model.update(
    dict(patch_size=PATCH, dim=16, depth=depth, num_heads=2, head_dim=8, stochastic_depth=0.0)
  )
  if score == 'mixture_of_keys':
    model.attention = common.attention(score, mixture=common.mixture_of_keys(pi_scope='position'))
  return build_model(model, num_classes=5, image_size=8, channels=3, rngs=nnx.Rngs(0))


@nnx.jit
def run(model, images, token_index=None):
  return model(images, token_index=token_index)


def np_layer_norm(x, norm):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...])


def test_kept_tokens_are_a_numpy_gather():
  """With no encoder blocks the logits read the kept tokens alone: check them in NumPy."""
  model = tiny_model('gmm')
  model.blocks = nnx.List([])
  images = unit_images(seed=6, batch=3)
  index = np.asarray([[0, 3, 7, 9, 15], [2, 4, 5, 6, 11], [1, 8, 10, 12, 14]], np.int32)
  got = run(model, jnp.asarray(images), jnp.asarray(index))
  px = np_patches(images.astype(np.float64), PATCH).reshape(3, 16, -1)
  tokens = px @ np.asarray(model.patch_embed.kernel[...]) + np.asarray(model.patch_embed.bias[...])
  tokens = tokens + np.asarray(model.pos_embed[...])[None]
  kept = np.take_along_axis(tokens, index[:, :, None], axis=1)
  pooled = np_layer_norm(kept.mean(axis=1), model.norm)
  expected = pooled @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  'mask_kind,score',
  [
    ('none', 'dot_product'),
    ('gmm', 'dot_product'),
    ('elm', 'dot_product'),
    ('gmm', 'mixture_of_keys'),
  ],
)
def test_permuted_tokens_carry_their_positions(mask_kind, score):
  """Keeping every token in another order changes nothing only if position embeddings,
  mask coordinates and per-position mixing weights travel with the tokens."""
  model = tiny_model(mask_kind, score)
  if mask_kind == 'elm':
    for block in model.blocks:
      w = block.attention.mask.weight
      w[...] = jnp.asarray(np.random.default_rng(0).normal(size=w.shape), jnp.float32)
  images = jnp.asarray(unit_images(seed=7, batch=2))
  rng = np.random.default_rng(1)
  index = jnp.asarray(np.stack([rng.permutation(16) for _ in range(2)]), jnp.int32)
  np.testing.assert_allclose(run(model, images, index), run(model, images), rtol=1e-4, atol=1e-5)


def test_mask_sees_the_kept_tokens_original_coordinates():
  model = tiny_model('gmm', depth=1)
  seen = []
  mask = model.blocks[0].attention.mask
  original = type(mask).evaluate

  class Recording(type(mask)):
    def evaluate(self, coords):
      jax.debug.callback(lambda c: seen.append(np.asarray(c)), coords)
      return original(self, coords)

  mask.__class__ = Recording
  index = np.asarray([[1, 6, 11, 12], [0, 5, 9, 15]], np.int32)
  jax.block_until_ready(run(model, jnp.asarray(unit_images(seed=8, batch=2)), jnp.asarray(index)))
  assert len(seen) == 1
  np.testing.assert_array_equal(seen[0], grid.grid_coords(4, 4)[index])


@pytest.mark.parametrize('side,cls', [(4, False), (4, True), (16, False)])
def test_gmm_mask_lookup_equals_direct_evaluation(side, cls):
  """The per-distance lookup gives the direct formula's values and gradients, cut-off included."""
  lookup = GaussianMixtureMask(3, num_kernels=2, grid_shape=(side, side), rngs=nnx.Rngs(0))
  direct = GaussianMixtureMask(3, num_kernels=2, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  n = side * side
  index = np.sort(np.stack([rng.permutation(n)[: n // 2] for _ in range(3)]), axis=1)
  shared, per_example = grid.grid_coords(side, side), grid.grid_coords(side, side)[index]
  for coords in (shared, per_example):
    coords = jnp.asarray(coords)
    if cls:
      coords = grid.with_leading_tokens(coords)
    logits = jnp.asarray(rng.normal(size=(3, 3) + coords.shape[-2:-1] * 2), jnp.float32)

    def loss(mask, logits=logits, coords=coords):
      return jnp.sum(jnp.sin(mask(logits, coords)))

    want, want_grad = nnx.jit(nnx.value_and_grad(loss))(direct)
    got, got_grad = nnx.jit(nnx.value_and_grad(loss))(lookup)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name in ('sigma', 'alpha'):
      np.testing.assert_allclose(got_grad[name][...], want_grad[name][...], rtol=1e-4, atol=1e-5)
