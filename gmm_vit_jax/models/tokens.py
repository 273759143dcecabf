"""Images to patch tokens, and the gather that keeps a subset of them.

Layout: images are NHWC. A patch's pixels are flattened in (p1, p2, c) order, as the
reference's `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`, so converted weights line up.
"""

import jax
import jax.numpy as jnp


def check_patch_size(image_size: int, patch_size: int, field: str = 'model.patch_size') -> int:
  """Returns the grid side; a clear error when the patch does not tile the image."""
  if patch_size <= 0 or image_size % patch_size:
    raise ValueError(
      f'{field}={patch_size} does not divide the image size {image_size}; '
      f'choose a divisor of {image_size}.'
    )
  return image_size // patch_size


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, (H/p)*(W/p), p*p*C)."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def take_tokens(x: jax.Array, index: jax.Array) -> jax.Array:
  """(B, N, ...) tokens, (B, K) indices -> (B, K, ...) kept tokens.

  Arrays shared by the batch, (N, ...) position embeddings or grid coordinates,
  need no helper: `shared[index]` is already (B, K, ...).
  """
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)
