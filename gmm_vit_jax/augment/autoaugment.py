"""AutoAugment: one random sub-policy per example, run as a select over the ops.

As in the reference, each step's sign is random for the shears, translations and
the four enhancements (factor 1 +- magnitude), while rotation is always
counter-clockwise by its magnitude.
"""

import jax
import jax.numpy as jnp

from gmm_vit_jax.augment import ops
from gmm_vit_jax.augment.policies import OP_NAMES, POLICIES, policy_tables

AUTOAUGMENT_POLICIES = ('none',) + tuple(POLICIES)

# op(image, magnitude, sign) for every name in OP_NAMES, in that order.
_STEPS = {
  'shear_x': lambda x, m, s: ops.shear_x(x, m * s),
  'shear_y': lambda x, m, s: ops.shear_y(x, m * s),
  'translate_x': lambda x, m, s: ops.translate_x(x, m * s),
  'translate_y': lambda x, m, s: ops.translate_y(x, m * s),
  'rotate': lambda x, m, s: ops.rotate(x, m),
  'color': lambda x, m, s: ops.color(x, 1.0 + m * s),
  'posterize': lambda x, m, s: ops.posterize(x, m.astype(jnp.int32)),
  'solarize': lambda x, m, s: ops.solarize(x, m),
  'contrast': lambda x, m, s: ops.contrast(x, 1.0 + m * s),
  'sharpness': lambda x, m, s: ops.sharpness(x, 1.0 + m * s),
  'brightness': lambda x, m, s: ops.brightness(x, 1.0 + m * s),
  'autocontrast': lambda x, m, s: ops.autocontrast(x),
  'equalize': lambda x, m, s: ops.equalize(x),
  'invert': lambda x, m, s: ops.invert(x),
}
# The last branch leaves the image as it is: a step that is not taken.
_BRANCHES = tuple(_STEPS[name] for name in OP_NAMES) + (lambda x, m, s: x,)
_SKIP = len(OP_NAMES)


def apply_op(image: jax.Array, op: jax.Array, magnitude: jax.Array, sign: jax.Array) -> jax.Array:
  """OP_NAMES[op] on one (H, W, C) uint8 image; op == len(OP_NAMES) is the identity."""
  return jax.lax.switch(op, _BRANCHES, image, magnitude, sign)


def autoaugment_image(image: jax.Array, u: jax.Array, policy: str) -> jax.Array:
  """One (H, W, C) uint8 image through a uniformly drawn sub-policy of `policy`.

  `u` holds the example's 5 uniforms in [0, 1): sub-policy, whether each step is
  taken, and each step's sign.
  """
  op_table, prob_table, mag_table = (jnp.asarray(t) for t in policy_tables(policy))
  count = op_table.shape[0]
  sub = jnp.minimum(jnp.floor(u[0] * count).astype(jnp.int32), count - 1)
  chosen = jnp.where(u[1:3] < prob_table[sub], op_table[sub], _SKIP)
  signs = jnp.where(u[3:5] < 0.5, 1.0, -1.0)
  # A scan over the two steps traces (and compiles) the op select once.
  step = lambda img, args: (apply_op(img, *args), None)
  image, _ = jax.lax.scan(step, image, (chosen, mag_table[sub], signs))
  return image


def autoaugment(images: jax.Array, key: jax.Array, policy: str) -> jax.Array:
  """(B, H, W, C) uint8 -> (B, H, W, C) uint8, independent draws per example."""
  u = jax.random.uniform(key, (images.shape[0], 5))
  return jax.vmap(autoaugment_image, (0, 0, None))(images, u, policy)
