"""The AutoAugment and RandAugment image operations, on one uint8 image, with PIL's arithmetic.

Every op maps an (H, W, C) uint8 image (C is 3, or 1 for grey) and traced scalar
arguments to an (H, W, C) uint8 image, so `jax.vmap` batches it and `lax.switch`
selects it. Both policies apply these through PIL (Image.transform, ImageOps,
ImageEnhance); each op follows the PIL routine it names, including its integer
rounding and its truncation of float results, so that the two agree pixel for pixel
up to float32 (here) against float64 (PIL's coordinates) rounding.

The geometric ops take `fill`, the colour of uncovered pixels (a grey level or one
value per channel); translation and rotation also take `resample`, 'nearest' (as
AutoAugment's reference) or 'bicubic' (as RandAugment in the DeiT recipe).
"""

import jax
import jax.numpy as jnp

# Colour the reference fills uncovered pixels with after a geometric op.
FILL = 128


def _to_uint8(x: jax.Array) -> jax.Array:
  """Clip to [0, 255] and truncate, as PIL stores a float result in 8 bits."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0)).astype(jnp.uint8)


def _fill(fill, channels: int) -> jax.Array:
  """`fill` (a grey level or C levels) as a (C,) uint8 array."""
  return jnp.broadcast_to(jnp.asarray(fill, jnp.uint8), (channels,))


def _gather(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """image[rows, cols] for integer index arrays of any shape (...) -> (..., C).

  One gather from the flattened pixels, much faster on a CPU than 2-D indexing.
  """
  h, w, c = image.shape
  flat = (rows * w + cols).reshape(-1)
  return jnp.take(image.reshape(h * w, c), flat, axis=0).reshape(*rows.shape, c)


def _cubic(v1, v2, v3, v4, d):
  """PIL's transform cubic (a = -1) through v2 and v3 at offset d in [0, 1)."""
  p2 = v3 - v1
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = v2 - v1 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def shear_x(image: jax.Array, shear, fill=FILL) -> jax.Array:
  """PIL AFFINE (1, shear, 0, 0, 1, 0), BICUBIC: input x = x + shear * y.

  Pixel centres are at +0.5. Every output row reads its own input row, so PIL's
  bicubic reduces to its cubic along the row, with edge-clamped taps.
  """
  h, w, _ = image.shape
  xs = jnp.arange(w, dtype=jnp.float32) + 0.5
  ys = jnp.arange(h, dtype=jnp.float32) + 0.5
  xin = xs[None, :] + jnp.asarray(shear, jnp.float32) * ys[:, None]
  x0 = jnp.floor(xin - 0.5)
  d = (xin - 0.5 - x0)[..., None]
  cols = jnp.clip(x0.astype(jnp.int32)[..., None] + jnp.arange(-1, 3), 0, w - 1)  # (H, W, 4)
  rows = jnp.broadcast_to(jnp.arange(h)[:, None, None], cols.shape)
  taps = _gather(image.astype(jnp.float32), rows, cols)  # (H, W, 4, C)
  out = _to_uint8(_cubic(taps[:, :, 0], taps[:, :, 1], taps[:, :, 2], taps[:, :, 3], d))
  inside = (xin >= 0) & (xin < w)
  return jnp.where(inside[..., None], out, _fill(fill, image.shape[-1]))


def shear_y(image: jax.Array, shear, fill=FILL) -> jax.Array:
  """PIL AFFINE (1, 0, 0, shear, 1, 0), BICUBIC: input y = shear * x + y."""
  return shear_x(image.transpose(1, 0, 2), shear, fill).transpose(1, 0, 2)


def _input_coordinates(image: jax.Array, matrix) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Where each output pixel centre samples the input under PIL's affine `matrix`, and
  whether that falls inside the image: (H, W) x, y and mask."""
  h, w, _ = image.shape
  a, b, c, d, e, f = (jnp.asarray(m, jnp.float32) for m in matrix)
  ys, xs = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32) + 0.5, jnp.arange(w, dtype=jnp.float32) + 0.5, indexing='ij'
  )
  xin = a * xs + b * ys + c
  yin = d * xs + e * ys + f
  return xin, yin, (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)


def affine_nearest(image: jax.Array, matrix, fill=FILL) -> jax.Array:
  """PIL `Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill)`.

  Args:
    image: (H, W, C) uint8.
    matrix: (a, b, c, d, e, f): the output pixel centre (x, y) (at +0.5, x along the
      width) samples the input at (a x + b y + c, d x + e y + f).
    fill: the colour of samples falling outside the input.

  Returns:
    (H, W, C) uint8.
  """
  h, w, _ = image.shape
  xin, yin, inside = _input_coordinates(image, matrix)
  cols = jnp.clip(jnp.floor(xin).astype(jnp.int32), 0, w - 1)
  rows = jnp.clip(jnp.floor(yin).astype(jnp.int32), 0, h - 1)
  return jnp.where(inside[..., None], _gather(image, rows, cols), _fill(fill, image.shape[-1]))


def affine_bicubic(image: jax.Array, matrix, fill=FILL) -> jax.Array:
  """PIL `Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill)`.

  PIL's cubic (a = -1, `_cubic`) over the 4 x 4 edge-clamped pixels about the sample,
  along each row and then down the column, truncated to 8 bits; `matrix` and `fill`
  as in `affine_nearest`.
  """
  h, w, _ = image.shape
  xin, yin, inside = _input_coordinates(image, matrix)
  x0, y0 = jnp.floor(xin - 0.5), jnp.floor(yin - 0.5)
  dx, dy = xin - 0.5 - x0, yin - 0.5 - y0
  offsets = jnp.arange(-1, 3)
  cols = jnp.clip(x0.astype(jnp.int32)[..., None] + offsets, 0, w - 1)  # (H, W, 4)
  rows = jnp.clip(y0.astype(jnp.int32)[..., None] + offsets, 0, h - 1)  # (H, W, 4)
  rows, cols = jnp.broadcast_arrays(rows[..., :, None], cols[..., None, :])  # (H, W, 4, 4)
  taps = _gather(image.astype(jnp.float32), rows, cols)  # (H, W, 4, 4, C)
  along = _cubic(
    taps[..., 0, :], taps[..., 1, :], taps[..., 2, :], taps[..., 3, :], dx[..., None, None]
  )  # (H, W, 4, C): one value per tap row.
  out = _to_uint8(
    _cubic(along[:, :, 0], along[:, :, 1], along[:, :, 2], along[:, :, 3], dy[..., None])
  )
  return jnp.where(inside[..., None], out, _fill(fill, image.shape[-1]))


RESAMPLERS = {'nearest': affine_nearest, 'bicubic': affine_bicubic}


def translate_x(image: jax.Array, fraction, fill=FILL, resample: str = 'nearest') -> jax.Array:
  """Samples `fraction` of the width to the right (the content moves left)."""
  return RESAMPLERS[resample](image, (1.0, 0.0, fraction * image.shape[1], 0.0, 1.0, 0.0), fill)


def translate_y(image: jax.Array, fraction, fill=FILL, resample: str = 'nearest') -> jax.Array:
  """Samples `fraction` of the height below (the content moves up)."""
  return RESAMPLERS[resample](image, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * image.shape[0]), fill)


def rotate(image: jax.Array, degrees, fill=FILL, resample: str = 'nearest') -> jax.Array:
  """PIL `Image.rotate(degrees)`: counter-clockwise about the centre."""
  h, w, _ = image.shape
  theta = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = w / 2.0, h / 2.0
  return RESAMPLERS[resample](
    image, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy), fill
  )


def grayscale(image: jax.Array) -> jax.Array:
  """PIL's RGB -> L (ITU-R 601-2 in 16-bit fixed point); (H, W, C) -> (H, W, 1) int32."""
  x = image.astype(jnp.int32)
  if image.shape[-1] == 1:
    return x
  weights = jnp.array([19595, 38470, 7471], jnp.int32)
  return ((x * weights).sum(-1, keepdims=True) + 0x8000) >> 16


def blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
  """PIL `Image.blend(degenerate, image, factor)`: float32, clipped and truncated."""
  degenerate = degenerate.astype(jnp.float32)
  factor = jnp.asarray(factor, jnp.float32)
  return _to_uint8(degenerate + factor * (image.astype(jnp.float32) - degenerate))


def color(image: jax.Array, factor) -> jax.Array:
  """ImageEnhance.Color: blend with the grey version; 0 is grey, 1 the image."""
  return blend(jnp.broadcast_to(grayscale(image), image.shape), image, factor)


def contrast(image: jax.Array, factor) -> jax.Array:
  """ImageEnhance.Contrast: blend with the rounded mean grey level; 0 is flat grey."""
  grey = grayscale(image)
  n = grey.size
  mean = (2 * grey.sum() + n) // (2 * n)  # int(mean + 0.5) without float rounding.
  return blend(jnp.full(image.shape, mean), image, factor)


def brightness(image: jax.Array, factor) -> jax.Array:
  """ImageEnhance.Brightness: blend with black."""
  return blend(jnp.zeros(image.shape), image, factor)


def smooth(image: jax.Array) -> jax.Array:
  """PIL ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded.

  PIL leaves the one-pixel border unfiltered.
  """
  x = image.astype(jnp.float32)
  side, centre = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)
  rows = x[:-2] + x[1:-1] + x[2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  inner = x[1:-1, 1:-1]
  filtered = jnp.floor(side * (box - inner) + centre * inner + 0.5).astype(jnp.uint8)
  return image.at[1:-1, 1:-1].set(filtered)


def sharpness(image: jax.Array, factor) -> jax.Array:
  """ImageEnhance.Sharpness: blend with the smoothed image; above 1 sharpens."""
  return blend(smooth(image), image, factor)


def posterize(image: jax.Array, bits) -> jax.Array:
  """Keeps the top `bits` (1-8) bits of every value."""
  shift = 8 - jnp.asarray(bits, jnp.int32)
  return ((image.astype(jnp.int32) >> shift) << shift).astype(jnp.uint8)


def solarize(image: jax.Array, threshold) -> jax.Array:
  """Inverts every value >= threshold."""
  return jnp.where(image < threshold, image, 255 - image).astype(jnp.uint8)


def solarize_add(image: jax.Array, addition, threshold=128) -> jax.Array:
  """Adds `addition` to every value below `threshold`, saturating at 255."""
  added = jnp.minimum(image.astype(jnp.int32) + jnp.asarray(addition, jnp.int32), 255)
  return jnp.where(image < threshold, added, image).astype(jnp.uint8)


def autocontrast(image: jax.Array) -> jax.Array:
  """ImageOps.autocontrast: per channel, maps [min, max] linearly onto [0, 255], floored.

  A flat channel is left as it is.
  """
  x = image.astype(jnp.int32)
  lo = x.min(axis=(0, 1))
  hi = x.max(axis=(0, 1))
  span = jnp.maximum(hi - lo, 1)
  stretched = jnp.clip((x - lo) * 255 // span, 0, 255)
  return jnp.where(hi > lo, stretched, x).astype(jnp.uint8)


def equalize(image: jax.Array) -> jax.Array:
  """ImageOps.equalize: per-channel histogram equalisation in PIL's integer arithmetic.

  With `step` = (pixels - count of the channel's largest value) // 255, value v maps
  to (step // 2 + count of values below v) // step; a channel with one value, or
  with step 0, is left as it is.
  """
  h, w, c = image.shape
  # Channel k's values index bins [256 k, 256 k + 256) of one flat histogram.
  bins = (image.astype(jnp.int32) + 256 * jnp.arange(c)).reshape(-1)
  hist = jnp.zeros(256 * c, jnp.int32).at[bins].add(1).reshape(c, 256)
  below = jnp.cumsum(hist, axis=1) - hist
  top = image.reshape(-1, c).max(axis=0).astype(jnp.int32)
  step = (h * w - jnp.take_along_axis(hist, top[:, None], axis=1)[:, 0]) // 255
  lut = jnp.clip((step[:, None] // 2 + below) // jnp.maximum(step, 1)[:, None], 0, 255)
  keep = ((hist > 0).sum(axis=1) <= 1) | (step == 0)
  lut = jnp.where(keep[:, None], jnp.arange(256), lut)
  return jnp.take(lut.reshape(-1), bins).reshape(h, w, c).astype(jnp.uint8)


def invert(image: jax.Array) -> jax.Array:
  return 255 - image
