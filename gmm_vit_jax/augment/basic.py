"""Flip, padded random crop and normalisation, vectorised over the batch.

Images are (B, H, W, C); every op draws one independent choice per example.
"""

import jax
import jax.numpy as jnp


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Horizontal flip of each example with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def random_crop(images: jax.Array, key: jax.Array, padding: int) -> jax.Array:
  """Zero-pads by `padding` on each side, then crops back to H x W at a random offset."""
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
