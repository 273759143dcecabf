"""Per-patch scores of the patch heuristic (docs/design.md, "Patch selection"), on patches.

Images are (B, H, W, C) floats with pixel values in [0, 1]: the contrast and entropy
formulas are defined on that range. A patch's pixels are those of
`models.tokens.patchify`, in the same row-major token order as the model's tokens.
"""

import jax
import jax.numpy as jnp

from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.models.tokens import patchify

SCORE_KINDS = ('contrast', 'entropy', 'variance', 'random')
# The reference adds it to max - min, so a flat patch scores ~0 rather than exactly 0.
CONTRAST_EPS = 1e-8


def patch_pixels(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, N, p*p, C): every patch's pixels, channels kept apart."""
  b, _, _, c = images.shape
  patches = patchify(images.astype(jnp.float32), patch_size)
  return patches.reshape(b, patches.shape[1], patch_size * patch_size, c)


def contrast(pixels: jax.Array) -> jax.Array:
  """(B, N, P, C) -> (B, N): (max - min + 1e-8) / (max + min) over the patch's pixels.

  A black patch (max + min = 0) has no contrast: 0, where the formula divides by zero.
  """
  top = jnp.max(pixels, axis=(-2, -1))
  low = jnp.min(pixels, axis=(-2, -1))
  total = top + low
  return jnp.where(total > 0, (top - low + CONTRAST_EPS) / jnp.where(total > 0, total, 1.0), 0.0)


def entropy(pixels: jax.Array, bins: int) -> jax.Array:
  """(B, N, P, C) -> (B, N): Shannon entropy in bits of each patch's intensity histogram.

  The histogram has `bins` equal bins over [0, 1] (values outside are clipped, 1.0 falls
  in the last bin, as numpy.histogram does) and pools the patch's channels:
  -sum_b p_b log2 p_b, p_b the fraction of the P * C values in bin b. 256 bins count
  each level of an 8-bit image on its own.
  """
  b, n = pixels.shape[:2]
  index = jnp.clip(jnp.floor(pixels * bins), 0, bins - 1).astype(jnp.int32)
  flat = (jnp.arange(b * n, dtype=jnp.int32).reshape(b, n, 1, 1) * bins + index).ravel()
  # A scatter of counts: a one-hot histogram would hold B * N * P * C * bins values.
  counts = jnp.zeros(b * n * bins, jnp.float32).at[flat].add(1.0).reshape(b, n, bins)
  p = counts / (pixels.shape[2] * pixels.shape[3])
  return -jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1) / jnp.log(2.0)


def variance(pixels: jax.Array) -> jax.Array:
  """(B, N, P, C) -> (B, N): variance over the patch's pixels per channel, mean over channels.

  The reference's unbiased estimate differs by the factor P / (P - 1), which changes
  neither a ranking nor a min-max normalised probability; this is the population one.
  """
  return jnp.mean(jnp.var(pixels, axis=-2), axis=-1)


def patch_scores(
  images: jax.Array, kind: str, patch_size: int, key: jax.Array | None = None, *, entropy_bins: int
) -> jax.Array:
  """(B, H, W, C) images in [0, 1] -> (B, N) scores, higher is kept first.

  'random' (the PatchDropout baseline) draws uniform scores from `key`; 'entropy'
  histograms intensities in `entropy_bins` bins.
  """
  pixels = patch_pixels(images, patch_size)
  if kind == 'contrast':
    return contrast(pixels)
  if kind == 'entropy':
    return entropy(pixels, entropy_bins)
  if kind == 'variance':
    return variance(pixels)
  if kind == 'random':
    if key is None:
      raise ValueError("patch_selection.kind='random' needs a PRNG key.")
    return jax.random.uniform(key, pixels.shape[:2])
  raise ConfigError(
    f'patch_selection.kind={kind!r} is not a patch score; choose one of {SCORE_KINDS}.'
  )
