"""Token coordinates on the patch grid, and the distances the masks are built from.

Coordinates are int32 (row, col) pairs in row-major grid order. A token that does
not sit on the grid (a CLS token, a distillation token) has coordinates (-1, -1):
masks leave every logit row or column that touches such a token unchanged.
"""

import jax.numpy as jnp
import numpy as np

NO_POSITION = -1


def grid_coords(height: int, width: int) -> np.ndarray:
  """Row-major coordinates of a height x width grid, shape (height*width, 2)."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([rows.ravel(), cols.ravel()], axis=-1).astype(np.int32)


def with_leading_tokens(coords: jnp.ndarray, count: int = 1) -> jnp.ndarray:
  """Prepends `count` off-grid tokens (e.g. CLS) to coords of shape (..., N, 2)."""
  lead = jnp.full(coords.shape[:-2] + (count, 2), NO_POSITION, jnp.int32)
  return jnp.concatenate([lead, coords.astype(jnp.int32)], axis=-2)


def on_grid(coords: jnp.ndarray) -> jnp.ndarray:
  """(..., N, 2) -> (..., N) bool: which tokens have a grid position."""
  return jnp.all(coords >= 0, axis=-1)


def pairwise_sq_dist(coords: jnp.ndarray) -> jnp.ndarray:
  """(..., N, 2) int coords -> (..., N, N) float32 squared Euclidean distances."""
  c = coords.astype(jnp.float32)
  diff = c[..., :, None, :] - c[..., None, :, :]
  return jnp.sum(diff * diff, axis=-1)


def pair_on_grid(coords: jnp.ndarray) -> jnp.ndarray:
  """(..., N, 2) -> (..., N, N) bool: both tokens of the pair have a grid position."""
  valid = on_grid(coords)
  return valid[..., :, None] & valid[..., None, :]


def flat_index(coords: jnp.ndarray, width: int) -> jnp.ndarray:
  """(..., N, 2) -> (..., N) row-major index on a grid of the given width (-1 off grid)."""
  index = coords[..., 0] * width + coords[..., 1]
  return jnp.where(on_grid(coords), index, NO_POSITION)
