"""Multi-head attention with a pluggable score function and a pluggable logit mask.

    logits = score(x, q, coords)    (B, H, N, M), log space; keys from `context` (B, M, C)
                                    instead of x for cross-attention (CaiT's class attention)
    logits = mask(logits, coords)   GMM / ELM, optional
    logits = logits + bias          additive terms a backbone owns (Swin's relative
                                    position bias and shift mask), optional
    logits = pre_softmax(logits)    head mixing (CaiT's talking heads), optional
    weights = softmax(logits)       over keys, in float32
    weights = post_softmax(weights)
    out = proj(weights @ v)         optional; out_dim sets its width (default C)
    out = out + skip                optional: the attention's input ('input') or the
                                    values merged over heads ('values'), T2T's two skips

From the score to `weights @ v` is the attention core, which runs in the implementation
`model.attention.implementation` names (attention/core.py).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax.attention import core
from gmm_vit_jax.attention.scores import DotProductScore, merge_heads, split_heads
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.initializers import dense_init
from gmm_vit_jax.linear import Linear

SKIPS = ('none', 'input', 'values')


class Attention(nnx.Module):
  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    head_dim: int,
    score: nnx.Module,
    mask: nnx.Module | None = None,
    qkv_bias: bool = False,
    project_out: bool = True,
    out_dim: int | None = None,
    skip: str = 'none',
    dropout: float = 0.0,
    pre_softmax: core.LogitsFn | None = None,
    post_softmax: core.LogitsFn | None = None,
    implementation: str = 'xla',
    max_slices: int = 1,
    dtype=jnp.float32,
    query_init: Callable = dense_init,
    value_init: Callable = dense_init,
    rngs: nnx.Rngs,
  ):
    """query_init, value_init: the kernel initialisers of the query and value projections
    (initializers.fused_dense_init where the reference fuses them with the keys)."""
    check_choice('attention skip', skip, SKIPS)
    check_choice('model.attention.implementation', implementation, core.IMPLEMENTATIONS)
    if max_slices < 1:
      raise ValueError(f'model.attention.max_slices must be >= 1, got {max_slices}.')
    inner = num_heads * head_dim
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.implementation = implementation
    self.max_slices = max_slices
    self.skip = skip
    self.query = Linear(
      dim, inner, use_bias=qkv_bias, dtype=dtype, kernel_init=query_init, rngs=rngs
    )
    self.score = score
    self.value = Linear(
      dim, inner, use_bias=qkv_bias, dtype=dtype, kernel_init=value_init, rngs=rngs
    )
    self.mask = mask
    self.pre_softmax = pre_softmax
    self.post_softmax = post_softmax
    self.out = (
      Linear(inner, out_dim or dim, dtype=dtype, kernel_init=dense_init, rngs=rngs)
      if project_out
      else None
    )
    self.dropout = nnx.Dropout(dropout)
    self.dtype = dtype

  def attention_weights(
    self,
    x: jax.Array,
    coords: jax.Array | None,
    bias: jax.Array | None = None,
    context: jax.Array | None = None,
    *,
    training: bool = False,
  ) -> jax.Array:
    """(B, N, C) tokens, (N, 2) or (B, N, 2) coords -> (B, H, N, M) float32 weights.

    context: (B, M, C) tokens the keys come from; None for self-attention (M = N).
    training: the score may update its non-trainable state (the mixture's E-step).
    """
    q = split_heads(self.query(x), self.num_heads)
    logits = self.score(self.key_source(x, context), q, coords, training=training)
    logits = core.masked_logits(logits, self.grid_mask(coords), bias)
    if self.pre_softmax is not None:
      logits = self.pre_softmax(logits)
    weights = jax.nn.softmax(logits, axis=-1)
    if self.post_softmax is not None:
      weights = self.post_softmax(weights)
    return weights

  def key_source(self, x: jax.Array, context: jax.Array | None) -> jax.Array:
    """The tokens keys and values come from: `context` in cross-attention, else x."""
    if context is None:
      return x
    if self.mask is not None:
      raise ValueError('a grid mask needs self-attention; it cannot take a context.')
    return context

  def grid_mask(self, coords: jax.Array | None) -> core.MaskValues | None:
    return None if self.mask is None else self.mask.evaluate(coords)

  def resolved_implementation(self, query_len: int, key_len: int) -> str:
    """The core implementation this layer runs on this platform (attention/core.py)."""
    return core.resolve_implementation(
      self.implementation,
      dot_product=isinstance(self.score, DotProductScore),
      logit_maps=self.pre_softmax is not None or self.post_softmax is not None,
      dtype=self.dtype,
      head_dim=self.head_dim,
      mask_mode=None if self.mask is None else self.mask.mode,
      lengths=(query_len, key_len),
    )

  def __call__(
    self,
    x: jax.Array,
    coords: jax.Array | None,
    *,
    bias: jax.Array | None = None,
    context: jax.Array | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """(B, N, C) -> (B, N, out_dim or C); (B, N, H*D) without the output projection.

    Keys and values come from `context` (B, M, C) when given.
    """
    source = self.key_source(x, context)
    v = split_heads(self.value(source), self.num_heads)
    implementation = self.resolved_implementation(x.shape[1], source.shape[1])
    if implementation == 'xla':
      weights = self.attention_weights(x, coords, bias, context, training=not deterministic)
      out = jnp.einsum('bhij,bhjd->bhid', weights.astype(v.dtype), v)
    else:
      out = core.attend(
        split_heads(self.query(x), self.num_heads),
        self.score.keys(source),
        v,
        implementation=implementation,
        scale=self.score.scale,
        mask=self.grid_mask(coords),
        bias=bias,
        pre_softmax=self.pre_softmax,
        post_softmax=self.post_softmax,
        max_slices=self.max_slices,
      )
    out = merge_heads(out)
    if self.out is not None:
      out = self.dropout(self.out(out), deterministic=deterministic, rngs=rngs)
    if self.skip == 'input':
      out = out + x
    elif self.skip == 'values':
      out = out + merge_heads(v)
    return out
