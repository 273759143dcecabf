"""Score functions: how a head turns queries and tokens into attention logits.

A score function owns the key side of attention. It maps tokens x (B, M, C),
queries q (B, H, N, D) and the tokens' grid coordinates ((N, 2) or (B, N, 2), see
attention/grid.py) to log-space scores (B, H, N, M); M = N in self-attention, x is
the context in cross-attention. The attention module applies the mask and the
softmax. Mixture-of-keys attention (attention/mixture_keys.py) is a second score
function with the same signature, so no backbone changes to use it; `training=True`
lets a score update its non-trainable state (the mixture's E-step).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax.attention.core import dot_product_logits
from gmm_vit_jax.initializers import dense_init
from gmm_vit_jax.linear import Linear


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """(B, N, H*D) -> (B, H, N, D)."""
  b, n, hd = x.shape
  return x.reshape(b, n, num_heads, hd // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: jax.Array) -> jax.Array:
  """(B, H, N, D) -> (B, N, H*D)."""
  b, h, n, d = x.shape
  return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


class DotProductScore(nnx.Module):
  """Scaled dot product q . k * scale, scale 1/sqrt(D) unless given: softmax attention logits."""

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    head_dim: int,
    use_bias: bool,
    scale: float | None = None,
    dtype=jnp.float32,
    kernel_init: Callable = dense_init,
    rngs: nnx.Rngs,
  ):
    self.key = Linear(
      dim, num_heads * head_dim, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, rngs=rngs
    )
    self.num_heads = num_heads
    self.scale = head_dim**-0.5 if scale is None else scale

  def keys(self, x: jax.Array) -> jax.Array:
    """(B, N, C) -> (B, H, N, D)."""
    return split_heads(self.key(x), self.num_heads)

  def __call__(
    self, x: jax.Array, q: jax.Array, coords: jax.Array | None = None, *, training: bool = False
  ) -> jax.Array:
    """The dot product does not depend on token position (`coords`) and has no state to
    update in training (`training`): neither is read."""
    return dot_product_logits(q, self.keys(x), self.scale)
