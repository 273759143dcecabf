"""Masks on the attention logits: the Gaussian Mixture Mask (GMM) and the ELM ablation.

Shapes: B batch, H heads, N tokens, K kernels. Logits are (B, H, N, N); token
coordinates are (N, 2) when every example keeps the same tokens, or (B, N, 2) after
per-example patch selection. Pairs that touch an off-grid token (CLS) are left as
they are whatever the mode.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax.attention import grid
from gmm_vit_jax.errors import check_choice

MASK_KINDS = ('none', 'gmm', 'elm')
MASK_MODES = ('multiply', 'add')

# float32 exp(-d2) is exactly zero from d2 = 104 on. The reference builds its mask
# from that value, so token pairs further apart than ~10.2 cells get a multiplier of
# 0 whatever sigma is; the published numbers on 16x16 grids were made with it.
REFERENCE_CUTOFF_SQ_DIST = 104.0
SIGMA_EPS = 1e-5

MaskMode = Literal['multiply', 'add']


class MaskValues(NamedTuple):
  """A grid mask evaluated for a layer's tokens: what apply_mask takes.

  values: (H, N, N) or (1, N, N), or per example (B, H, N, N) / (B, 1, N, N).
  valid: (N, N) or (B, N, N), the pairs the mask applies to.
  """

  values: jax.Array
  valid: jax.Array
  mode: MaskMode


def gaussian_mixture(
  sq_dist: jax.Array, sigma: jax.Array, alpha: jax.Array, cutoff: bool = True
) -> jax.Array:
  """G = sum_k alpha[k, h] * exp(-d2 / (2 (sigma[k, h]^2 + 1e-5))).

  Args:
    sq_dist: (..., N, N) squared grid distances.
    sigma, alpha: (K, H).
    cutoff: zero the pairs with d2 >= 104, as the float32 reference does.

  Returns:
    (..., H, N, N) float32.
  """
  d2 = sq_dist.astype(jnp.float32)[..., None, None, :, :]
  var = (sigma.astype(jnp.float32) ** 2 + SIGMA_EPS)[:, :, None, None]
  kernels = jnp.exp(-d2 / (2.0 * var))
  if cutoff:
    kernels = jnp.where(d2 < REFERENCE_CUTOFF_SQ_DIST, kernels, 0.0)
  return jnp.sum(alpha.astype(jnp.float32)[:, :, None, None] * kernels, axis=-4)


def apply_mask(logits: jax.Array, values: jax.Array, valid: jax.Array, mode: MaskMode) -> jax.Array:
  """Combines mask values with logits where `valid`; elsewhere the logits pass through.

  logits: (B, H, N, N); values: broadcastable to it; valid: (N, N) or (B, N, N).
  """
  if valid.ndim == 3:
    valid = valid[:, None]
  values = values.astype(logits.dtype)
  if mode == 'multiply':
    return jnp.where(valid, logits * values, logits)
  return logits + jnp.where(valid, values, 0).astype(logits.dtype)


class GridMask(nnx.Module):
  """A mask whose `values(coords)` apply to the pairs of on-grid tokens in `mode`."""

  def evaluate(self, coords: jax.Array) -> MaskValues:
    return MaskValues(self.values(coords), grid.pair_on_grid(coords), self.mode)

  def __call__(self, logits: jax.Array, coords: jax.Array) -> jax.Array:
    return apply_mask(logits, *self.evaluate(coords))


class GaussianMixtureMask(GridMask):
  """K Gaussian kernels per head over grid distance, with learnable width and weight.

  Given the grid shape, the kernels are evaluated once per integer squared distance
  and looked up per token pair, with the same values. After patch selection every
  example has its own coordinates, and evaluating the kernels per example and pair
  costs more than the rest of a ViT train step (benchmarks/patch_and_keys.py).
  """

  def __init__(
    self,
    num_heads: int,
    *,
    num_kernels: int = 5,
    mode: MaskMode = 'multiply',
    cutoff: bool = True,
    grid_shape: tuple[int, int] | None = None,
    rngs: nnx.Rngs,
  ):
    check_choice('model.mask.mode', mode, MASK_MODES)
    if num_kernels < 1:
      raise ValueError(f'model.mask.num_kernels must be >= 1, got {num_kernels}.')
    shape = (num_kernels, num_heads)
    self.sigma = nnx.Param(10.0 + 10.0 * jax.random.normal(rngs.params(), shape))
    self.alpha = nnx.Param(2.0 * jax.random.normal(rngs.params(), shape))
    self.mode = mode
    self.cutoff = cutoff
    self.grid_shape = None if grid_shape is None else tuple(grid_shape)
    self.max_sq_dist = (
      None if grid_shape is None else (grid_shape[0] - 1) ** 2 + (grid_shape[1] - 1) ** 2
    )

  def values(self, coords: jax.Array) -> jax.Array:
    """(..., N, 2) coords -> (..., H, N, N) mask values."""
    sq_dist = grid.pairwise_sq_dist(coords)
    if self.max_sq_dist is None:
      return gaussian_mixture(sq_dist, self.sigma[...], self.alpha[...], self.cutoff)
    all_sq_dist = jnp.arange(self.max_sq_dist + 1, dtype=jnp.float32)[None]
    table = gaussian_mixture(all_sq_dist, self.sigma[...], self.alpha[...], self.cutoff)[:, 0]
    # Pairs with an off-grid token fall outside the table; apply_mask ignores their values.
    index = jnp.clip(sq_dist.astype(jnp.int32), 0, self.max_sq_dist)
    return jnp.moveaxis(table[:, index], 0, -3)


class ElementwiseMask(GridMask):
  """ELM: one learnable (N, N) matrix over the full grid, shared by heads, zero-initialised."""

  def __init__(self, grid_shape: tuple[int, int], *, mode: MaskMode = 'multiply'):
    check_choice('model.mask.mode', mode, MASK_MODES)
    n = grid_shape[0] * grid_shape[1]
    self.weight = nnx.Param(jnp.zeros((n, n), jnp.float32))
    self.grid_width = grid_shape[1]
    self.mode = mode

  def values(self, coords: jax.Array) -> jax.Array:
    """(..., N, 2) coords -> (..., 1, N, N): the entries of the kept tokens' pairs."""
    index = jnp.maximum(grid.flat_index(coords, self.grid_width), 0)
    return self.weight[...][index[..., :, None], index[..., None, :]][..., None, :, :]


def make_mask(
  kind: str,
  *,
  num_heads: int,
  grid_shape: tuple[int, int],
  num_kernels: int,
  mode: MaskMode,
  cutoff: bool,
  rngs: nnx.Rngs,
):
  """The mask named by a config's `model.mask.kind`; None for 'none'."""
  check_choice('model.mask.kind', kind, MASK_KINDS)
  if kind == 'gmm':
    return GaussianMixtureMask(
      num_heads, num_kernels=num_kernels, mode=mode, cutoff=cutoff, grid_shape=grid_shape, rngs=rngs
    )
  if kind == 'elm':
    return ElementwiseMask(grid_shape, mode=mode)
  return None
