"""Batch-level Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) as in the reference.

As the reference trains, one draw decides for the whole batch whether to mix and
which of the two to use, and the batch shares one mixing ratio, one pairing (a
random permutation) and, for CutMix, one box. Targets are mixed with the ratio of
pixels actually kept, so a loss on the returned targets equals the reference's
lam * loss(y_a) + (1 - lam) * loss(y_b) for any loss linear in the target
(cross-entropy with label smoothing included).

On a mesh of several devices, images pair within each device's shard of the batch
(shard_map over the 'data' axis), so no image crosses devices: the mixing decision,
the ratio and the box are still one draw for the whole batch, and each shard draws its
own pairing.
"""

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from gmm_vit_jax.sharding import DATA_AXIS


def cutmix_box(u: jax.Array, height: int, width: int, lam: jax.Array) -> tuple[jax.Array, ...]:
  """(top, bottom, left, right) of the pasted box, bottom and right exclusive.

  Sides are 2 (floor(side * sqrt(1 - lam)) // 2) about a centre pixel drawn uniformly
  from the two uniforms `u`; the box is clipped to the image, so its area can fall
  short of (1 - lam).
  """
  cut = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * cut).astype(jnp.int32) // 2
  half_w = jnp.floor(width * cut).astype(jnp.int32) // 2
  cy = jnp.minimum(jnp.floor(u[0] * height).astype(jnp.int32), height - 1)
  cx = jnp.minimum(jnp.floor(u[1] * width).astype(jnp.int32), width - 1)
  return (
    jnp.clip(cy - half_h, 0, height),
    jnp.clip(cy + half_h, 0, height),
    jnp.clip(cx - half_w, 0, width),
    jnp.clip(cx + half_w, 0, width),
  )


def symmetric_beta(key: jax.Array, concentration) -> jax.Array:
  """One Beta(a, a) draw, G0 / (G0 + G1) for two Gamma(a) draws (a may be traced).

  In log space, so that a small `a`, whose Gamma draws can underflow, stays finite.
  """
  log_g = jax.random.loggamma(key, jnp.full((2,), concentration, jnp.float32))
  return jax.nn.sigmoid(log_g[0] - log_g[1])


def cutmix(images: jax.Array, targets: jax.Array, perm: jax.Array, lam: jax.Array, u: jax.Array):
  """Pastes a box of image perm[i] into every image i of the (B, H, W, C) batch.

  The box is drawn for the ratio `lam` from the two uniforms `u` (`cutmix_box`); the (B, K)
  targets are weighted by the area actually kept.
  """
  _, h, w, _ = images.shape
  top, bottom, left, right = cutmix_box(u, h, w, lam)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(box[None, :, :, None], images[perm], images)
  kept = 1.0 - (bottom - top) * (right - left) / (h * w)
  return mixed, kept * targets + (1.0 - kept) * targets[perm]


def mixup(images: jax.Array, targets: jax.Array, perm: jax.Array, lam: jax.Array):
  """lam * x + (1 - lam) * x[perm], on the (B, H, W, C) images and (B, K) targets."""
  return lam * images + (1.0 - lam) * images[perm], lam * targets + (1.0 - lam) * targets[perm]


def mix_batch(
  images: jax.Array,
  targets: jax.Array,
  key: jax.Array,
  *,
  prob: float,
  cutmix_prob: float,
  mixup_alpha: float,
  cutmix_beta: float,
  mesh: Mesh | None = None,
):
  """With probability `prob` mixes the batch: CutMix with `cutmix_prob`, else Mixup.

  Args:
    images: (B, H, W, C) float.
    targets: (B, K) float.
    prob, cutmix_prob: may be traced.
    mixup_alpha, cutmix_beta: Python floats, the Beta concentrations of the ratio.
    mesh: the batch is split over its 'data' axis; images pair within each shard. None
      or one device: the whole batch is one shard.

  Returns:
    The images and targets, mixed or as given.
  """
  u_key, perm_key, lam_key = jax.random.split(key, 3)
  u = jax.random.uniform(u_key, (4,))  # Mix or not, which, box centre row and column.
  which = jnp.where(u[0] < prob, jnp.where(u[1] < cutmix_prob, 1, 2), 0)
  if mixup_alpha == cutmix_beta == 1.0:
    # Beta(1, 1) is the uniform distribution: the recipe's case skips the Gamma sampler.
    lam = jax.random.uniform(lam_key)
  else:
    lam = symmetric_beta(lam_key, jnp.where(which == 1, cutmix_beta, mixup_alpha))

  def mix(x, t, perm_key, which, lam, u):
    perm = jax.random.permutation(perm_key, x.shape[0])
    branches = (
      lambda x, t: (x, t),
      lambda x, t: cutmix(x, t, perm, lam, u[2:]),
      lambda x, t: mixup(x, t, perm, lam),
    )
    return jax.lax.switch(which, branches, x, t)

  if mesh is None or mesh.size == 1:
    return mix(images, targets, perm_key, which, lam, u)

  def per_shard(x, t, perm_key, which, lam, u):
    return mix(x, t, jax.random.fold_in(perm_key, jax.lax.axis_index(DATA_AXIS)), which, lam, u)

  batch, shared = P(DATA_AXIS), P()
  return jax.shard_map(
    per_shard, mesh=mesh, in_specs=(batch, batch) + (shared,) * 4, out_specs=(batch, batch)
  )(images, targets, perm_key, which, lam, u)
