"""A picture of what the augmentation does: originals above augmented draws."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmm_vit_jax.augment.pipeline import augment_batch


def denormalize(images: jax.Array, mean, std) -> np.ndarray:
  """Normalised float (B, H, W, C) -> uint8 [0, 255], the inverse of `normalize`."""
  x = np.asarray(images) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def tile(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Rows of (N, H, W, C) uint8 images -> one (R (H + pad) + pad, N (W + pad) + pad, 3) grid.

  Grey images are shown as RGB; the gaps are white.
  """
  r, (n, h, w, _) = len(rows), rows[0].shape
  grid = np.full((r * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y : y + h, x : x + w] = np.broadcast_to(image, (h, w, 3))
  return grid


def augmentation_grid(
  images: np.ndarray,
  key: jax.Array,
  config: ml_collections.ConfigDict,
  *,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  draws: int = 4,
  pad: int = 2,
) -> np.ndarray:
  """The first row shows the (N, H, W, C) uint8 images, each next row one augmented draw.

  Each draw runs `augment_batch` on the N images as one batch (so a draw may be
  mixed), and is shown with the normalisation undone.

  Returns:
    ((draws + 1) (H + pad) + pad, N (W + pad) + pad, 3) uint8 RGB.
  """
  images = np.asarray(images, np.uint8)
  labels = jnp.zeros(images.shape[0], jnp.int32)

  @jax.jit
  def draw(k):
    return augment_batch(jnp.asarray(images), labels, k, config, num_classes=1, mean=mean, std=std)[
      0
    ]

  rows = [images] + [denormalize(draw(k), mean, std) for k in jax.random.split(key, draws)]
  return tile(rows, pad)
