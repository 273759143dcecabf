"""A picture of the patch selection: kept patches as they are, dropped ones dimmed and hatched."""

import numpy as np

HATCH_COLOUR = np.array([255, 64, 64], np.uint8)
BACKGROUND = 255


def draw_kept_patches(
  images: np.ndarray,
  token_index: np.ndarray,
  *,
  patch_size: int,
  max_images: int = 8,
  columns: int = 8,
  scale: int = 4,
  dim: float = 0.35,
  hatch_period: int = 4,
  border: int = 2,
) -> np.ndarray:
  """(B, H, W, C) images, (B, K) kept indices -> (rows, cols, 3) uint8 RGB grid.

  Images are uint8, or floats in [0, 1]; one channel is drawn grey. Each image is
  upscaled `scale` times (nearest) so the hatching shows; a dropped patch is dimmed to
  `dim` of its brightness and crossed by diagonal lines every `hatch_period` pixels.
  Suits TensorBoard (add a leading axis) and PNG files alike.
  """
  images = np.asarray(images)[:max_images]
  token_index = np.asarray(token_index)[:max_images]
  if images.dtype != np.uint8:
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  b, h, w, c = images.shape
  if c == 1:
    images = np.repeat(images, 3, axis=-1)
  elif c != 3:
    raise ValueError(f'draw_kept_patches draws 1 or 3 channels, got {c}.')
  gh, gw = h // patch_size, w // patch_size
  kept = np.zeros((b, gh * gw), bool)
  np.put_along_axis(kept, token_index, True, axis=1)
  dropped = np.repeat(
    np.repeat(~kept.reshape(b, gh, gw), patch_size * scale, axis=1), patch_size * scale, axis=2
  )
  big = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
  rows, cols = np.indices(big.shape[1:3])
  hatch = dropped & ((rows + cols) % hatch_period == 0)[None]
  out = np.where(dropped[..., None], np.round(big * dim), big).astype(np.uint8)
  out[hatch] = HATCH_COLOUR
  columns = min(columns, b)
  grid_rows = -(-b // columns)
  tile_h, tile_w = h * scale + border, w * scale + border
  canvas = np.full(
    (grid_rows * tile_h + border, columns * tile_w + border, 3), BACKGROUND, np.uint8
  )
  for i, tile in enumerate(out):
    r, col = divmod(i, columns)
    canvas[border + r * tile_h : (r + 1) * tile_h, border + col * tile_w : (col + 1) * tile_w] = (
      tile
    )
  return canvas
