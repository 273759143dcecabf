"""The GMM and ELM masks against an independent NumPy computation.

The Gaussian Mixture Mask and the element-wise learnable mask of Li and Zhang, 'Toward a
Deeper Understanding: RetNet Viewed through Convolution' (2023), with its reference code's
float32 cut-off (docs/design.md, "Papers").
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax.attention import grid, masks


def numpy_gmm(side: int, sigma: np.ndarray, alpha: np.ndarray, cutoff: bool) -> np.ndarray:
  """G[h, i, j] by explicit loops over a side x side row-major grid, in float64."""
  k_count, heads = sigma.shape
  n = side * side
  out = np.zeros((heads, n, n))
  for h, i, j in itertools.product(range(heads), range(n), range(n)):
    d2 = (i // side - j // side) ** 2 + (i % side - j % side) ** 2
    if cutoff and d2 >= 104:
      continue
    out[h, i, j] = sum(
      alpha[k, h] * np.exp(-d2 / (2 * (sigma[k, h] ** 2 + 1e-5))) for k in range(k_count)
    )
  return out


@pytest.mark.parametrize('side,cutoff', [(4, True), (8, True), (16, True), (16, False)])
def test_gaussian_mixture_matches_numpy(side, cutoff):
  rng = np.random.default_rng(side)
  sigma = rng.normal(10, 10, (3, 2))
  alpha = rng.normal(0, 2, (3, 2))
  coords = grid.grid_coords(side, side)
  ours = masks.gaussian_mixture(
    grid.pairwise_sq_dist(jnp.asarray(coords)), jnp.asarray(sigma), jnp.asarray(alpha), cutoff
  )
  np.testing.assert_allclose(ours, numpy_gmm(side, sigma, alpha, cutoff), rtol=2e-5, atol=1e-5)


def test_cutoff_reproduces_float32_reference_construction():
  """The reference: float32 sqrt(exp(-d2)) ** (1 / (sigma^2 + 1e-5)), summed over kernels."""
  side = 16
  coords = grid.grid_coords(side, side)
  d2 = ((coords[:, None] - coords[None]) ** 2).sum(-1).astype(np.float32)
  sigma = np.array([[12.0], [30.0]], np.float32)
  alpha = np.array([[1.5], [-0.5]], np.float32)
  base = np.sqrt(np.exp(-d2))
  reference = sum(alpha[k, 0] * base ** (1 / (sigma[k, 0] ** 2 + 1e-5)) for k in range(2))
  ours = np.asarray(
    masks.gaussian_mixture(jnp.asarray(d2), jnp.asarray(sigma), jnp.asarray(alpha), cutoff=True)
  )[0]
  assert np.all(ours[d2 >= 104] == 0) and np.all(reference[d2 >= 104] == 0)
  normal = d2 < 88  # Below the float32 subnormal range, where the reference is exact.
  np.testing.assert_allclose(ours[normal], reference[normal], rtol=1e-4, atol=1e-6)
  assert np.any(ours[(d2 >= 88) & (d2 < 104)] != 0)


def test_multiply_and_add_modes_leave_off_grid_tokens_alone():
  rng = np.random.default_rng(0)
  coords = grid.with_leading_tokens(jnp.asarray(grid.grid_coords(3, 3)))
  n = coords.shape[0]
  logits = jnp.asarray(rng.normal(size=(2, 4, n, n)), jnp.float32)
  mask = masks.GaussianMixtureMask(4, num_kernels=2, mode='multiply', rngs=nnx.Rngs(0))
  g = np.asarray(mask.values(coords))
  expected = np.array(logits)
  expected[:, :, 1:, 1:] *= g[:, 1:, 1:]
  np.testing.assert_allclose(mask(logits, coords), expected, rtol=1e-6)
  mask.mode = 'add'
  expected = np.array(logits)
  expected[:, :, 1:, 1:] += g[:, 1:, 1:]
  np.testing.assert_allclose(mask(logits, coords), expected, rtol=1e-6)


def test_mask_of_a_token_subset_is_the_full_mask_restricted():
  mask = masks.GaussianMixtureMask(3, num_kernels=5, mode='multiply', rngs=nnx.Rngs(1))
  full = np.asarray(mask.values(jnp.asarray(grid.grid_coords(8, 8))))
  keep = np.array([[0, 5, 9, 40, 63], [1, 2, 3, 4, 62]])
  subset = np.asarray(mask.values(jnp.asarray(grid.grid_coords(8, 8))[keep]))
  for b in range(2):
    np.testing.assert_allclose(subset[b], full[:, keep[b]][:, :, keep[b]], rtol=1e-5, atol=1e-6)


def test_elm_gathers_its_matrix_by_original_position():
  elm = masks.ElementwiseMask((4, 4), mode='multiply')
  weight = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
  elm.weight[...] = jnp.asarray(weight)
  keep = np.array([[3, 7, 15]])
  coords = jnp.asarray(grid.grid_coords(4, 4))[keep]
  logits = jnp.ones((1, 2, 3, 3))
  np.testing.assert_allclose(elm(logits, coords)[0, 1], weight[keep[0]][:, keep[0]], rtol=1e-6)
  fresh = masks.ElementwiseMask((4, 4), mode='multiply')
  assert np.all(np.asarray(fresh.weight[...]) == 0)


def test_reference_initialisation_statistics():
  mask = masks.GaussianMixtureMask(200, num_kernels=50, mode='multiply', rngs=nnx.Rngs(0))
  sigma, alpha = np.asarray(mask.sigma[...]), np.asarray(mask.alpha[...])
  assert sigma.shape == alpha.shape == (50, 200)
  assert abs(sigma.mean() - 10) < 0.3 and abs(sigma.std() - 10) < 0.3
  assert abs(alpha.mean()) < 0.06 and abs(alpha.std() - 2) < 0.06


@pytest.mark.parametrize(
  'kwargs,field',
  [
    (dict(kind='gaussian'), 'mask.kind'),
    (dict(mode='mul'), 'mask.mode'),
  ],
)
def test_bad_mask_settings_name_the_field(kwargs, field):
  settings = dict(
    kind='gmm',
    num_heads=2,
    grid_shape=(2, 2),
    num_kernels=2,
    mode='multiply',
    cutoff=True,
    rngs=nnx.Rngs(0),
  )
  settings.update(kwargs)
  kind = settings.pop('kind')
  with pytest.raises(ValueError, match=field):
    masks.make_mask(kind, **settings)
