"""RandAugment (Cubuk et al. 2020) as the DeiT recipe applies it, run as a select over the ops.

Each example takes `num_ops` ops drawn uniformly, with replacement, from RAND_OPS; each
drawn op is applied with probability OP_PROB at a level that is `magnitude` plus
Gaussian noise of standard deviation `magnitude_std`, clipped to [0, MAX_LEVEL] (timm's
`rand-m9-mstd0.5-inc1`: 2 ops, level 9, noise 0.5, the ops whose strength increases with
the level). The shears, translations, rotation and the four enhancements take a random
sign. Geometric ops resample bicubically and fill uncovered pixels with the dataset's
mean colour.
"""

import jax
import jax.numpy as jnp

from gmm_vit_jax.augment import ops

MAX_LEVEL = 10.0
OP_PROB = 0.5


def _fraction(level: jax.Array) -> jax.Array:
  return level / MAX_LEVEL


def enhance_factor(level: jax.Array, sign: jax.Array) -> jax.Array:
  """1 +- 0.9 level / MAX_LEVEL, at least 0.1."""
  return jnp.maximum(0.1, 1.0 + _fraction(level) * 0.9 * sign)


def _geometric(op, scale: float):
  return lambda x, m, s, fill: op(x, _fraction(m) * scale * s, fill=fill, resample='bicubic')


# op(image, level, sign, fill) for each op, level in [0, MAX_LEVEL]. Posterize keeps
# 4 - floor(4 level / 10) bits and solarize inverts from 256 - floor(256 level / 10) up,
# so both strengthen as the level grows; solarize_add adds floor(110 level / 10) below 128.
RAND_OPS = {
  'autocontrast': lambda x, m, s, fill: ops.autocontrast(x),
  'equalize': lambda x, m, s, fill: ops.equalize(x),
  'invert': lambda x, m, s, fill: ops.invert(x),
  'rotate': _geometric(ops.rotate, 30.0),
  'posterize': lambda x, m, s, fill: ops.posterize(
    x, 4 - jnp.floor(_fraction(m) * 4).astype(jnp.int32)
  ),
  'solarize': lambda x, m, s, fill: ops.solarize(x, 256 - jnp.floor(_fraction(m) * 256)),
  'solarize_add': lambda x, m, s, fill: ops.solarize_add(
    x, jnp.floor(_fraction(m) * 110).astype(jnp.int32)
  ),
  'color': lambda x, m, s, fill: ops.color(x, enhance_factor(m, s)),
  'contrast': lambda x, m, s, fill: ops.contrast(x, enhance_factor(m, s)),
  'brightness': lambda x, m, s, fill: ops.brightness(x, enhance_factor(m, s)),
  'sharpness': lambda x, m, s, fill: ops.sharpness(x, enhance_factor(m, s)),
  'shear_x': lambda x, m, s, fill: ops.shear_x(x, _fraction(m) * 0.3 * s, fill),
  'shear_y': lambda x, m, s, fill: ops.shear_y(x, _fraction(m) * 0.3 * s, fill),
  'translate_x': _geometric(ops.translate_x, 0.45),
  'translate_y': _geometric(ops.translate_y, 0.45),
}
OP_NAMES = tuple(RAND_OPS)
# The last branch leaves the image as it is: an op that is not taken.
_BRANCHES = tuple(RAND_OPS.values()) + (lambda x, m, s, fill: x,)
_SKIP = len(OP_NAMES)


def apply_op(
  image: jax.Array, op: jax.Array, level: jax.Array, sign: jax.Array, fill: jax.Array
) -> jax.Array:
  """OP_NAMES[op] on one (H, W, C) uint8 image; op == len(OP_NAMES) is the identity."""
  return jax.lax.switch(op, _BRANCHES, image, level, sign, fill)


def randaugment_image(
  image: jax.Array,
  u: jax.Array,
  noise: jax.Array,
  *,
  magnitude: float,
  magnitude_std: float,
  fill: jax.Array,
) -> jax.Array:
  """One (H, W, C) uint8 image through len(noise) RandAugment ops.

  `u` is (num_ops, 3) uniforms in [0, 1) (which op, whether it is taken, its sign),
  `noise` (num_ops,) standard normals, `fill` (C,) uint8.
  """
  count = len(OP_NAMES)
  drawn = jnp.minimum(jnp.floor(u[:, 0] * count).astype(jnp.int32), count - 1)
  chosen = jnp.where(u[:, 1] < OP_PROB, drawn, _SKIP)
  signs = jnp.where(u[:, 2] < 0.5, 1.0, -1.0)
  levels = jnp.clip(magnitude + magnitude_std * noise, 0.0, MAX_LEVEL)
  # A scan over the ops traces (and compiles) the op select once.
  step = lambda img, args: (apply_op(img, *args, fill), None)
  image, _ = jax.lax.scan(step, image, (chosen, levels, signs))
  return image


def randaugment(
  images: jax.Array, key: jax.Array, *, num_ops: int, magnitude: float, magnitude_std: float, fill
) -> jax.Array:
  """(B, H, W, C) uint8 -> (B, H, W, C) uint8, independent draws per example.

  fill: (C,) uint8 levels (or one grey level) of the pixels geometric ops uncover.
  """
  u_key, noise_key = jax.random.split(key)
  b, channels = images.shape[0], images.shape[-1]
  u = jax.random.uniform(u_key, (b, num_ops, 3))
  noise = jax.random.normal(noise_key, (b, num_ops))
  fill = jnp.broadcast_to(jnp.asarray(fill, jnp.uint8), (channels,))
  one = lambda img, u, z: randaugment_image(
    img, u, z, magnitude=magnitude, magnitude_std=magnitude_std, fill=fill
  )
  return jax.vmap(one)(images, u, noise)
