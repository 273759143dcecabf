"""Mixture-of-Gaussian-keys scores (MGK: Nguyen et al., ICML 2022), a second score function.

Each head models key j as a mixture of M Gaussians with means k_jr, variances
sigma_r^2 and mixing weights pi_jr. Query i attends to key j with the posterior

    A_ij = sum_r pi_jr exp(-|q_i - k_jr|^2 / (2 sigma_r^2))
           / sum_j' sum_r pi_j'r exp(-|q_i - k_j'r|^2 / (2 sigma_r^2)).

The score is the log of the numerator, reduced over r with logsumexp (soft E-step),
so that the attention module's softmax over j yields A_ij. The hard E-step keeps only
the most responsible component, max_r pi_jr exp(...); with uniform pi that is the
MGK reference's nearest-component distance.

Variants of the keys:
  'mgk'   k_jr = x_j W_kr: one key projection per component.
  'smgk'  k_jr = x_j W_k + b_r: one projection and a learned shift per component.

With M = 1, keys of equal norm and sigma^2 = sqrt(D), A is exactly softmax attention
softmax_j(q_i . k_j / sqrt(D)): the reduction the MGK paper derives.

Shapes: B batch, H heads, M keys per token, N tokens, D head dim, C model width.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gmm_vit_jax.attention import grid
from gmm_vit_jax.attention.masks import check_choice
from gmm_vit_jax.attention.scores import split_heads
from gmm_vit_jax.initializers import dense_init
from gmm_vit_jax.linear import Linear

VARIANTS = ('mgk', 'smgk')
E_STEPS = ('soft', 'hard')
# The MGK reference starts the shifts of sMGK from N(0, 0.5^2) with the first one at 0,
# so one component starts as the plain key.
SHIFT_INIT_STD = 0.5


class MixtureOfKeysScore(nnx.Module):
  """M Gaussian keys per head and token; returns (B, H, N, N) log-space scores.

  Mixing weights pi are stored as logits and normalised with log_softmax over r:
  one set per head, or (pi_per_position) one per head and key position. Positions
  are grid cells, plus one shared slot for off-grid tokens (CLS), so that after
  patch selection each kept key keeps the weights of its original cell.
  """

  def __init__(self, dim: int, *, num_heads: int, head_dim: int, num_keys: int, variant: str,
               e_step: str, pi_per_position: bool, learn_variance: bool, use_bias: bool,
               grid_shape: tuple[int, int] | None = None, dtype=jnp.float32,
               kernel_init: Callable = dense_init, rngs: nnx.Rngs):
    check_choice('model.attention.mixture.variant', variant, VARIANTS)
    check_choice('model.attention.mixture.e_step', e_step, E_STEPS)
    if num_keys < 1:
      raise ValueError(f'attention.mixture.num_keys must be >= 1, got {num_keys}.')
    if pi_per_position and grid_shape is None:
      raise ValueError('attention.mixture.pi_per_position=True needs the token grid shape '
                       '(build the score through make_attention).')
    inner = num_heads * head_dim
    linear = lambda: Linear(dim, inner, use_bias=use_bias, dtype=dtype,
                            kernel_init=kernel_init, rngs=rngs)
    if variant == 'mgk':
      self.key = nnx.List([linear() for _ in range(num_keys)])
      self.shift = None
    else:
      self.key = linear()
      shift = SHIFT_INIT_STD * jax.random.normal(rngs.params(), (num_heads, num_keys, head_dim))
      self.shift = nnx.Param(shift.at[:, 0].set(0.0))
    self.grid_shape = grid_shape
    pi_shape = (num_heads, num_keys)
    if pi_per_position:
      pi_shape += (grid_shape[0] * grid_shape[1] + 1,)
    # Zero logits: uniform pi = 1/M, the reference's initial 0.5 / 0.5 for M = 2.
    self.pi_logits = nnx.Param(jnp.zeros(pi_shape, jnp.float32))
    # The paper's and reference's sigma_r^2 = sqrt(D) for every component.
    log_var = np.full((num_heads, num_keys), 0.5 * np.log(head_dim), np.float32)
    self.log_var = nnx.Param(jnp.asarray(log_var)) if learn_variance else None
    self.fixed_inv_var = float(np.exp(-log_var[0, 0]))
    self.variant = variant
    self.e_step = e_step
    self.num_heads = num_heads
    self.pi_per_position = pi_per_position

  def keys(self, x: jax.Array) -> jax.Array:
    """(B, N, C) -> (B, H, M, N, D) component means k_jr."""
    if self.variant == 'mgk':
      return jnp.stack([split_heads(key(x), self.num_heads) for key in self.key], axis=2)
    k = split_heads(self.key(x), self.num_heads)[:, :, None]
    return k + self.shift[...].astype(k.dtype)[None, :, :, None, :]

  def log_pi(self, coords: jax.Array | None) -> jax.Array:
    """log pi_jr, broadcastable to (B, H, M, N_query, N_key)."""
    log_pi = jax.nn.log_softmax(self.pi_logits[...], axis=1)
    if not self.pi_per_position:
      return log_pi[None, :, :, None, None]
    if coords is None:
      raise ValueError('attention.mixture.pi_per_position=True needs the tokens\' coordinates.')
    slot = grid.flat_index(coords, self.grid_shape[1])
    slot = jnp.where(slot < 0, log_pi.shape[-1] - 1, slot)
    per_key = log_pi[..., slot]  # (H, M, N) or (H, M, B, N)
    if slot.ndim == 1:
      return per_key[None, :, :, None, :]
    return jnp.moveaxis(per_key, 2, 0)[:, :, :, None, :]

  def __call__(self, x: jax.Array, q: jax.Array, coords: jax.Array | None = None) -> jax.Array:
    """(B, N, C) tokens, (B, H, N, D) queries -> (B, H, N, N) float32 log-scores.

    -|q_i - k_jr|^2 / (2 s_r^2) = (q_i . k_jr - |k_jr|^2 / 2) / s_r^2 - |q_i|^2 / (2 s_r^2).
    The last term is dropped where it is the same for every component: it is then
    constant over j, and the softmax over j is invariant to it (exactly so without a
    mask and with an additive mask; a multiplicative mask scales this reduced score,
    which for M = 1 and sigma^2 = sqrt(D) is the dot-product logit q . k / sqrt(D) less
    a key-only term, the quantity the GMM reference multiplies). With learned variances
    only its mean over r is dropped: the remainder weighs the components per query.
    """
    k = self.keys(x)
    qk = jnp.einsum('bhid,bhmjd->bhmij', q, k).astype(jnp.float32)
    k_sq = jnp.sum(jnp.square(k.astype(jnp.float32)), axis=-1)[:, :, :, None, :]
    if self.log_var is None:
      log_comp = (qk - 0.5 * k_sq) * self.fixed_inv_var
    else:
      inv_var = jnp.exp(-self.log_var[...])  # (H, M)
      q_sq = jnp.sum(jnp.square(q.astype(jnp.float32)), axis=-1)[:, :, None, :, None]
      q_weight = (inv_var - jnp.mean(inv_var, axis=1, keepdims=True))[None, :, :, None, None]
      log_comp = (qk - 0.5 * k_sq) * inv_var[None, :, :, None, None] - 0.5 * q_sq * q_weight
    log_comp = log_comp + self.log_pi(coords)
    if self.e_step == 'soft':
      return jax.nn.logsumexp(log_comp, axis=2)
    return jnp.max(log_comp, axis=2)
