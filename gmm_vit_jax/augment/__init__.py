"""Training-time augmentation, run on the device inside the jitted train step.

Entry point: `augment_batch`, uint8 images in, normalised float images and
(possibly mixed) one-hot targets out. Each example draws its own randomness.
"""

import jax
import jax.numpy as jnp
import ml_collections

from gmm_vit_jax.augment.basic import normalize, random_crop, random_flip


def augment_batch(images: jax.Array, labels: jax.Array, key: jax.Array,
                  config: ml_collections.ConfigDict, *, num_classes: int,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
  """(B, H, W, C) uint8, (B,) int labels -> (B, H, W, C) float32, (B, num_classes) targets."""
  crop_key, flip_key = jax.random.split(key)
  x = images
  if config.flip:
    x = random_flip(x, flip_key)
  if config.crop_padding:
    x = random_crop(x, crop_key, config.crop_padding)
  return normalize(x, mean, std), jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
