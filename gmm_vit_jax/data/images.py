"""Image files to model inputs: the one preprocessing that image folders, streamed tfds
records and predict share, so a bundle sees what training saw.

`read_image(path, size, channels)` -> uint8 (size, size, channels):
  1. decode with PIL; a file of several frames (an animation, a multi-page TIFF) is refused;
     the EXIF orientation is applied;
  2. scale to [0, 1] by the range of the pixel type: 8-bit / 255, 16-bit / 65535, float
     images as they are when within [0, 1], else by their own minimum and maximum;
  3. composite a transparent image over white;
  4. convert to `channels`: grey from RGB by ITU-R 601 luma (PIL's 'L' weights), RGB
     from grey by repeating it;
  5. `fit_image`: the centre square (side = the shorter side) resized to size x size, by
     exact area averaging when it shrinks (each output pixel the mean of the input area it
     covers, partly covered pixels weighted by their share) and bilinearly when it grows;
  6. round to uint8.
Every step computes in float32, so 16-bit images keep their precision until the last.
PREPROCESSING names this recipe in inference bundles.
"""

import numpy as np
from PIL import Image, ImageOps

from gmm_vit_jax import errors, storage

PREPROCESSING = 'centre_square_area_resize'
# File name endings taken for images; other files in an image folder are skipped.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
# 601 luma weights, as PIL's convert('L').
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


class ImageError(errors.UserError):
  """An image file that cannot be read, or holds several frames: `path` and `why`."""

  def __init__(self, path: str, why: str):
    super().__init__(f'{path} cannot be used as an image: {why}.')
    self.path, self.why = path, why

  def __reduce__(self):  # Raised in grain's worker processes, pickled back to the trainer.
    return type(self), (self.path, self.why)


def to_unit(image: Image.Image) -> np.ndarray:
  """A PIL image -> float32 (H, W, 1 or 3) in [0, 1], alpha composited over white."""
  if image.mode in _SIXTEEN_BIT:
    return np.clip(np.asarray(image, np.float32) / 65535, 0, 1)[..., None]
  if image.mode == 'F':
    pixels = np.asarray(image, np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
      pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    return pixels[..., None]
  alpha = 'A' in image.getbands() or 'transparency' in image.info
  grey = image.mode in ('1', 'L', 'LA') or (image.mode == 'P' and _grey_palette(image))
  target = ('LA' if grey else 'RGBA') if alpha else ('L' if grey else 'RGB')
  pixels = np.asarray(image.convert(target), np.float32) / 255
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if alpha:
    colour, opacity = pixels[..., :-1], pixels[..., -1:]
    pixels = colour * opacity + (1 - opacity)
  return pixels


def _grey_palette(image: Image.Image) -> bool:
  palette = image.getpalette() or []
  rgb = np.reshape(palette[: len(palette) // 3 * 3], (-1, 3))
  return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def _channels(pixels: np.ndarray, channels: int) -> np.ndarray:
  if pixels.shape[-1] == channels:
    return pixels
  if channels == 1:
    return (pixels[..., :3] @ LUMA)[..., None]
  return np.repeat(pixels[..., :1], channels, axis=-1)


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
  """An image -> uint8 (size, size, channels): its centre square resized to `size` (area
  averaging down, bilinear up), grey <-> RGB converted.

  Args:
    image: (H, W) or (H, W, C) pixels, C 1 or 3: unsigned integers over their type's
      range (uint8 0..255, uint16 0..65535), or floats in [0, 1].
    size: the side of the square output.
    channels: 1 (grey) or 3 (RGB).
  """
  pixels = np.asarray(image)
  if np.issubdtype(pixels.dtype, np.unsignedinteger):
    pixels = pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  pixels = _channels(pixels.astype(np.float32), channels)
  h, w = pixels.shape[:2]
  side = min(h, w)
  if (h, w) == (size, size):
    pass
  elif side >= size:
    pixels = _area_resize(
      _area_resize(pixels, (h - side) / 2, side, size), (w - side) / 2, side, size, axis=1
    )
  else:
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    pixels = np.stack(
      [
        np.asarray(
          Image.fromarray(np.ascontiguousarray(pixels[..., c]), 'F').resize(
            (size, size), Image.Resampling.BILINEAR, box=box
          )
        )
        for c in range(channels)
      ],
      axis=-1,
    )
  return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def _area_resize(
  pixels: np.ndarray, start: float, length: float, size: int, axis: int = 0
) -> np.ndarray:
  """Averages of `pixels` along `axis` over `size` equal intervals of [start, start + length),
  each input pixel j counted by its overlap with the interval: the integral of the
  piecewise-constant signal, from its cumulative sum, differenced at the interval edges."""
  x = np.moveaxis(pixels, axis, 0)
  n = x.shape[0]
  integral = np.concatenate([np.zeros_like(x[:1]), np.cumsum(x, axis=0, dtype=np.float64)])
  edges = start + length * np.arange(size + 1) / size
  k = np.clip(np.floor(edges).astype(int), 0, n - 1)
  frac = (edges - k).reshape(-1, *([1] * (x.ndim - 1)))
  at_edges = integral[k] + frac * (integral[k + 1] - integral[k])
  return np.moveaxis((np.diff(at_edges, axis=0) * (size / length)).astype(np.float32), 0, axis)


def read_image(path: str, size: int, channels: int) -> np.ndarray:
  """The image file at `path` as uint8 (size, size, channels), preprocessed as the module
  docstring says; an ImageError naming the file when it cannot be."""
  try:
    with storage.open_file(path, 'rb') as f, Image.open(f) as image:
      frames = getattr(image, 'n_frames', 1)
      if frames > 1:
        raise ImageError(
          path,
          f'it holds {frames} frames (an animation or a multi-page '
          'file); save the one frame you mean as a PNG',
        )
      pixels = to_unit(ImageOps.exif_transpose(image))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(path, why_unreadable(e)) from e
  return fit_image(pixels, size, channels)


def why_unreadable(e: Exception) -> str:
  """A short reason for a failure to open or decode an image file."""
  if isinstance(e, FileNotFoundError):
    return 'no such file'
  if isinstance(e, IsADirectoryError):
    return 'a directory, not an image'
  if isinstance(e, Image.DecompressionBombError):
    return f'too many pixels to decode safely ({e})'
  if isinstance(e, Image.UnidentifiedImageError):
    return 'not an image file PIL can read'
  return f'{type(e).__name__}: {e}'


def border_brightness(images: np.ndarray) -> float:
  """Mean of the outermost ring of pixels of uint8 (..., H, W, C) images, in [0, 1]: how
  light the background of centred subjects is."""
  images = np.asarray(images, np.float32) / 255
  ring = np.concatenate(
    [
      images[..., 0, :, :],
      images[..., -1, :, :],
      images[..., 1:-1, 0, :],
      images[..., 1:-1, -1, :],
    ],
    axis=-2,
  )
  return float(ring.mean())
