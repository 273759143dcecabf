"""Random erasing (Zhong et al. 2020) as the reference applies it, after normalisation.

The reference writes the dataset's channel means (e.g. 0.4914 for CIFAR-10's red)
into the already normalised image, so an erased pixel reads as mean + mean * std in
[0, 1] units, not as the mean colour; this module does the same.
"""

import jax
import jax.numpy as jnp

# Rectangles drawn before giving up on an example, as in the reference.
ATTEMPTS = 100
# Uniform draws one example uses: area and aspect per attempt, apply, top, left.
DRAWS = 2 * ATTEMPTS + 3


def uniform_index(u: jax.Array, n: jax.Array) -> jax.Array:
  """A uniform integer in [0, n) from u uniform in [0, 1)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def erase_image(
  image: jax.Array,
  u: jax.Array,
  *,
  prob: float,
  area: tuple[float, float],
  min_aspect: float,
  value: jax.Array,
) -> jax.Array:
  """With probability `prob`, fills one random rectangle of an (H, W, C) image with `value`.

  The rectangle covers a uniform fraction in `area` of the image with a uniform
  height / width ratio in [min_aspect, 1 / min_aspect]; sides are rounded to pixels
  and must be shorter than the image's, else the draw is repeated (up to ATTEMPTS).
  `u` holds the example's DRAWS uniforms in [0, 1).
  """
  h, w, _ = image.shape
  target = (area[0] + (area[1] - area[0]) * u[:ATTEMPTS]) * (h * w)
  aspect = min_aspect + (1.0 / min_aspect - min_aspect) * u[ATTEMPTS : 2 * ATTEMPTS]
  heights = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  widths = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (heights < h) & (widths < w)
  first = jnp.argmax(fits)
  eh, ew = heights[first], widths[first]
  top = uniform_index(u[-2], h - eh + 1)
  left = uniform_index(u[-1], w - ew + 1)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  erase = (u[-3] < prob) & fits.any()
  return jnp.where((erase & box)[..., None], value, image)


def random_erasing(
  images: jax.Array,
  key: jax.Array,
  *,
  prob: float,
  area: tuple[float, float],
  min_aspect: float,
  value,
) -> jax.Array:
  """(B, H, W, C) float images, independent draws per example; `value` is (C,)."""
  u = jax.random.uniform(key, (images.shape[0], DRAWS))
  value = jnp.asarray(value, images.dtype)
  erase = lambda img, v: erase_image(
    img, v, prob=prob, area=area, min_aspect=min_aspect, value=value
  )
  return jax.vmap(erase)(images, u)
