"""The Inception crop (Szegedy et al. 2015, "Going deeper with convolutions", section 6):
a random box, resized back to the image's size, as torchvision's RandomResizedCrop draws
it and PIL's bicubic resize scales it (the DeiT recipe's first step).

The box covers a uniform fraction in `scale` of the image's area with a width / height
ratio log-uniform in `ratio`; its sides are rounded to pixels and it must fit inside the
image, else the draw is repeated (up to ATTEMPTS). When no draw fits, the box is the
largest centred one whose ratio lies in `ratio`.
"""

import math

import jax
import jax.numpy as jnp

from gmm_vit_jax.augment.erasing import uniform_index

ATTEMPTS = 10
# Uniform draws one example uses: area and ratio per attempt, top, left.
DRAWS = 2 * ATTEMPTS + 2
# PIL's bicubic resize kernel (a = -0.5) reaches this many source pixels either side.
SUPPORT = 2.0


def centre_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(top, left, box height, box width) of the fallback: the whole image when its width /
  height lies in `ratio`, else the largest centred box at the nearest end of `ratio`."""
  aspect = width / height
  if aspect < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def crop_box(
  u: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[jax.Array, ...]:
  """(top, left, box height, box width) int32 of one example's box; `u` is its DRAWS uniforms."""
  area = scale[0] + (scale[1] - scale[0]) * u[:ATTEMPTS]
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[ATTEMPTS : 2 * ATTEMPTS])
  target = area * (height * width)
  widths = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  heights = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
  first = jnp.argmax(fits)
  found = fits.any()
  top0, left0, h0, w0 = centre_box(height, width, ratio)
  h = jnp.where(found, heights[first], h0)
  w = jnp.where(found, widths[first], w0)
  top = jnp.where(found, uniform_index(u[-2], height - h + 1), top0)
  left = jnp.where(found, uniform_index(u[-1], width - w + 1), left0)
  return top, left, h, w


def bicubic_kernel(x: jax.Array) -> jax.Array:
  """PIL's resize kernel: Keys' cubic convolution with a = -0.5, zero beyond |x| = 2."""
  x = jnp.abs(x)
  a = -0.5
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def resize_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
  """(out_size, in_size) weights of PIL's bicubic resize of pixels [start, start + length)
  of a line of in_size to out_size pixels.

  Output pixel i is centred at c = (i + 0.5) length / out_size inside the span; when
  shrinking, the kernel widens by s = length / out_size. It reads span pixels p in
  [floor(c - 2 max(s, 1) + 0.5), floor(c + 2 max(s, 1) + 0.5)), clipped to the span,
  with weights kernel((p - c + 0.5) / max(s, 1)) that sum to one.
  """
  length = length.astype(jnp.float32)
  scale = length / out_size
  stretch = jnp.maximum(scale, 1.0)
  centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
  lo = jnp.maximum(jnp.floor(centre - SUPPORT * stretch + 0.5), 0.0)
  hi = jnp.minimum(jnp.floor(centre + SUPPORT * stretch + 0.5), length)
  pos = (jnp.arange(in_size) - start).astype(jnp.float32)  # Within the span.
  read = (pos >= lo[:, None]) & (pos < hi[:, None])
  weights = jnp.where(read, bicubic_kernel((pos - centre[:, None] + 0.5) / stretch), 0.0)
  total = weights.sum(axis=1, keepdims=True)
  return weights / jnp.where(total == 0.0, 1.0, total)


def _round_to_uint8(x: jax.Array) -> jax.Array:
  """Round half up and clip, as PIL stores each resize pass in 8 bits."""
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


def resized_crop(
  image: jax.Array, top: jax.Array, left: jax.Array, h: jax.Array, w: jax.Array
) -> jax.Array:
  """PIL `image.crop(box).resize((W, H), BICUBIC)` of one (H, W, C) uint8 image.

  As PIL, resizes along the rows first, rounds to 8 bits, then down the columns.
  """
  height, width, _ = image.shape
  across = resize_weights(left, w, width, width)  # (W out, W in)
  down = resize_weights(top, h, height, height)  # (H out, H in)
  highest = jax.lax.Precision.HIGHEST  # Pixel values need float32's full mantissa.
  x = image.astype(jnp.float32)
  x = _round_to_uint8(jnp.einsum('jx,yxc->yjc', across, x, precision=highest))
  x = _round_to_uint8(jnp.einsum('iy,yjc->ijc', down, x, precision=highest))
  return x.astype(jnp.uint8)


def inception_crop(
  images: jax.Array, key: jax.Array, *, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
  """(B, H, W, C) uint8 -> (B, H, W, C) uint8, an independent box per example."""
  b, height, width, _ = images.shape
  u = jax.random.uniform(key, (b, DRAWS))
  boxes = jax.vmap(lambda v: crop_box(v, height, width, scale, ratio))(u)
  return jax.vmap(resized_crop)(images, *boxes)
