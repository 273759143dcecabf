"""Mixture-of-Gaussian-keys scores (MGK: Nguyen et al., ICML 2022), a second score function.

Each head models key j as a mixture of M Gaussians with means k_jr, variances
sigma_r^2 and mixing weights pi_jr. Query i attends to key j with the posterior

    A_ij = sum_r pi_jr exp(-|q_i - k_jr|^2 / (2 sigma_r^2))
           / sum_j' sum_r pi_j'r exp(-|q_i - k_j'r|^2 / (2 sigma_r^2)).

The score is the log of the numerator, so that the attention module's softmax over j
yields A_ij. How the components combine (`e_step`) and where pi comes from (`pi`):

  e_step='soft'  logsumexp over r of log pi_jr + log N_r: the sum above.
  e_step='hard'  max over r: only the most responsible component counts.
  pi='e_step'    the paper's soft E-step. pi is not learned by gradient: it is a
                 non-trainable state (MixingWeights, not an nnx.Param), set in every
                 training forward pass to the mean responsibilities
                 gamma_ijr = pi_jr N_r(q_i | k_jr) / sum_r' pi_jr' N_r'(q_i | k_jr')
                 over the batch and the queries i (and, with pi_scope='head', the keys j),
                 and used as it is at evaluation. Starts at 1/M. Needs e_step='soft'.
  pi='learned'   a different variant: pi = softmax over r of trainable logits, learned by
                 SGD with the rest of the model.
  pi='none'      no mixing weights (every pi_jr = 1): with e_step='hard', the paper's hard
                 E-step, the max over r of the Gaussian terms.

Where pi varies (`pi_scope`):
  'position'     one pi per head and key position j, shape (H, M, P): the MGK paper's
                 pi_jr and its code's, whose E-step keeps the per-key batch means.
  'head'         one pi per head, shared by every key (H, M): the per-key means pooled
                 over the positions too, a coarser variant.

Variants of the keys:
  'mgk'   k_jr = x_j W_kr: one key projection per component.
  'smgk'  k_jr = x_j W_k + b_r: one projection and a learned shift per component.

With M = 1, keys of equal norm and sigma^2 = sqrt(D), A is exactly softmax attention
softmax_j(q_i . k_j / sqrt(D)): the reduction the MGK paper derives.

Shapes: B batch, H heads, M keys per token, N tokens, D head dim, C model width.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gmm_vit_jax.attention import grid
from gmm_vit_jax.attention.scores import split_heads
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.initializers import dense_init
from gmm_vit_jax.linear import Linear

VARIANTS = ('mgk', 'smgk')
E_STEPS = ('soft', 'hard')
PI_KINDS = ('e_step', 'learned', 'none')
PI_SCOPES = ('position', 'head')
# The MGK reference starts the shifts of sMGK from N(0, 0.5^2) with the first one at 0,
# so one component starts as the plain key.
SHIFT_INIT_STD = 0.5


class MixingWeights(nnx.Variable):
  """Mixing weights pi set by the soft E-step: model state, but not a trainable parameter."""


class MixtureOfKeysScore(nnx.Module):
  """M Gaussian keys per head and token; returns (B, H, N, N) log-space scores.

  Mixing weights pi (pi='e_step': MixingWeights `pi`; pi='learned': Param `pi_logits`,
  normalised with log_softmax over r): with pi_scope='position' one set per head and key
  position, shape (H, M, P); with 'head' one per head, (H, M). Positions are grid
  cells, plus one shared slot for off-grid tokens (CLS), P = cells + 1, so that after
  patch selection each kept key keeps the weights of its original cell.
  """

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    head_dim: int,
    num_keys: int,
    variant: str,
    e_step: str,
    pi: str,
    pi_scope: str,
    learn_variance: bool,
    use_bias: bool,
    grid_shape: tuple[int, int] | None = None,
    dtype=jnp.float32,
    kernel_init: Callable = dense_init,
    rngs: nnx.Rngs,
  ):
    check_choice('model.attention.mixture.variant', variant, VARIANTS)
    check_choice('model.attention.mixture.e_step', e_step, E_STEPS)
    check_choice('model.attention.mixture.pi', pi, PI_KINDS)
    check_choice('model.attention.mixture.pi_scope', pi_scope, PI_SCOPES)
    if pi == 'e_step' and e_step != 'soft':
      raise ValueError(
        "model.attention.mixture.pi='e_step' is the soft E-step's update; "
        "with e_step='hard' use pi='none' (the paper's hard E-step) or 'learned'."
      )
    if num_keys < 1:
      raise ValueError(f'attention.mixture.num_keys must be >= 1, got {num_keys}.')
    # pi='none' has no weights to place.
    pi_per_position = pi_scope == 'position' and pi != 'none'
    if pi_per_position and grid_shape is None:
      raise ValueError(
        "attention.mixture.pi_scope='position' needs the token grid shape "
        '(build the score through make_attention).'
      )
    inner = num_heads * head_dim
    linear = lambda: Linear(
      dim, inner, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, rngs=rngs
    )
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
    # Both start at uniform pi = 1/M, the reference's initial 0.5 / 0.5 for M = 2.
    self.pi = (
      MixingWeights(jnp.full(pi_shape, 1.0 / num_keys, jnp.float32)) if pi == 'e_step' else None
    )
    self.pi_logits = nnx.Param(jnp.zeros(pi_shape, jnp.float32)) if pi == 'learned' else None
    # The paper's and reference's sigma_r^2 = sqrt(D) for every component.
    log_var = np.full((num_heads, num_keys), 0.5 * np.log(head_dim), np.float32)
    self.log_var = nnx.Param(jnp.asarray(log_var)) if learn_variance else None
    self.fixed_inv_var = float(np.exp(-log_var[0, 0]))
    self.variant = variant
    self.e_step = e_step
    self.pi_kind = pi
    self.num_keys = num_keys
    self.num_heads = num_heads
    self.pi_per_position = pi_per_position

  def keys(self, x: jax.Array) -> jax.Array:
    """(B, N, C) -> (B, H, M, N, D) component means k_jr."""
    if self.variant == 'mgk':
      return jnp.stack([split_heads(key(x), self.num_heads) for key in self.key], axis=2)
    k = split_heads(self.key(x), self.num_heads)[:, :, None]
    return k + self.shift[...].astype(k.dtype)[None, :, :, None, :]

  def pi_slots(self, coords: jax.Array | None) -> jax.Array:
    """(N,) or (B, N) index of each key's slot in the last axis of a per-position pi."""
    if coords is None:
      raise ValueError("attention.mixture.pi_scope='position' needs the tokens' coordinates.")
    slot = grid.flat_index(coords, self.grid_shape[1])
    return jnp.where(slot < 0, self.grid_shape[0] * self.grid_shape[1], slot)

  def log_pi(self, coords: jax.Array | None) -> jax.Array | None:
    """log pi_jr, broadcastable to (B, H, M, N_query, N_key); None for pi='none'."""
    if self.pi_kind == 'none':
      return None
    if self.pi_kind == 'learned':
      log_pi = jax.nn.log_softmax(self.pi_logits[...], axis=1)
    else:
      log_pi = jnp.log(self.pi[...])
    if not self.pi_per_position:
      return log_pi[None, :, :, None, None]
    slot = self.pi_slots(coords)
    per_key = log_pi[..., slot]  # (H, M, N) or (H, M, B, N)
    if slot.ndim == 1:
      return per_key[None, :, :, None, :]
    return jnp.moveaxis(per_key, 2, 0)[:, :, :, None, :]

  def e_step_update(self, log_comp: jax.Array, coords: jax.Array | None) -> None:
    """Sets pi to the mean responsibilities of this batch (the soft E-step).

    log_comp: (B, H, M, N_query, N_key) log pi_jr + log N_r(q_i | k_jr), up to terms
    equal for every r. gamma = its softmax over r, averaged over the batch and the
    queries, and over the keys too with pi_scope='head'; a position no key of the
    batch occupies (tokens dropped by patch selection) keeps its pi.
    """
    gamma = jax.lax.stop_gradient(jax.nn.softmax(log_comp, axis=2))
    per_key = jnp.mean(gamma, axis=3)  # (B, H, M, N_key)
    if not self.pi_per_position:
      self.pi[...] = jnp.mean(per_key, axis=(0, 3))
      return
    b, n = per_key.shape[0], per_key.shape[-1]
    slot = jnp.broadcast_to(self.pi_slots(coords), (b, n))
    old = self.pi[...]
    sums = jnp.zeros_like(old).at[:, :, slot].add(jnp.moveaxis(per_key, 0, 2))
    counts = jnp.zeros(old.shape[-1], old.dtype).at[slot].add(1.0)
    self.pi[...] = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), old)

  def __call__(
    self, x: jax.Array, q: jax.Array, coords: jax.Array | None = None, *, training: bool = False
  ) -> jax.Array:
    """(B, N, C) tokens, (B, H, N, D) queries -> (B, H, N, N) float32 log-scores.

    training: with pi='e_step', run the E-step on this batch (pi's new value is used
    from the next call on, as the reference does).

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
    log_pi = self.log_pi(coords)
    if log_pi is not None:
      log_comp = log_comp + log_pi
    if training and self.pi_kind == 'e_step':
      self.e_step_update(log_comp, coords)
    if self.e_step == 'soft':
      return jax.nn.logsumexp(log_comp, axis=2)
    return jnp.max(log_comp, axis=2)
