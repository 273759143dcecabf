"""The small-dataset CaiT of the GMM paper: patch self-attention, then class attention.

    patches -> Linear -> + pos -> patch layers (self-attention over the patch tokens)
    CLS -> class layers (queries from CLS, keys and values from the patch tokens)
    -> LayerNorm -> Linear on CLS

Every layer is pre-norm with LayerScale and talking-heads attention: the logits are
mixed across heads before the softmax, the weights again after it. The GMM / ELM
mask acts on the patch layers' logits before that first mix; class attention has no
mask. As the reference, class-attention keys and values come from the patch tokens
only (not CLS) and without a LayerNorm; stochastic depth is the same in every layer.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gmm_vit_jax.attention import Attention, grid, make_attention, make_score
from gmm_vit_jax.initializers import dense_init, embedding_init, fused_dense_init
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import Mlp, drop_path
from gmm_vit_jax.models.tokens import check_patch_size, patchify, take_tokens


def layer_scale_init(layer: int) -> float:
  """CaiT's LayerScale start value for the 1-based index of a layer in its transformer."""
  if layer <= 18:
    return 0.1
  if layer <= 24:
    return 1e-5
  return 1e-6


class TalkingHeads(nnx.Module):
  """Linear mix across heads: (B, H, N, M) -> (B, H, N, M), out[:, g] = sum_h x[:, h] k[h, g]."""

  def __init__(self, num_heads: int, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(embedding_init(rngs.params(), (num_heads, num_heads)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.einsum('bhij,hg->bgij', x, self.kernel[...].astype(x.dtype))


class LayerScaleBlock(nnx.Module):
  """x + drop(s1 * attn(norm1(x), context)), then x + drop(s2 * mlp(norm2(x))).

  s1, s2: (C,) learnable per-channel scales. context: (B, M, C) key/value tokens for
  class attention, used as they are (not normalised); None for self-attention.
  """

  def __init__(
    self,
    dim: int,
    attention: Attention,
    mlp: Mlp,
    *,
    layer_scale: float,
    drop_path_rate: float,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.norm1 = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attention = attention
    self.attention_scale = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
    self.norm2 = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = mlp
    self.mlp_scale = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
    self.drop_path_rate = drop_path_rate

  def __call__(
    self,
    x: jax.Array,
    coords: jax.Array | None,
    *,
    context: jax.Array | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    kw = dict(deterministic=deterministic, rngs=rngs)
    y = self.attention(self.norm1(x), coords, context=context, **kw)
    x = x + drop_path(y * self.attention_scale[...].astype(y.dtype), self.drop_path_rate, **kw)
    y = self.mlp(self.norm2(x), **kw)
    return x + drop_path(y * self.mlp_scale[...].astype(y.dtype), self.drop_path_rate, **kw)


class CaiT(nnx.Module):
  # Patch selection may drop its tokens: nothing after the embedding needs the full grid.
  can_drop_tokens = True

  def __init__(
    self,
    *,
    image_size: int,
    patch_size: int,
    channels: int,
    num_classes: int,
    dim: int,
    depth: int,
    class_depth: int,
    num_heads: int,
    head_dim: int,
    mlp_dim: int,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    side = check_patch_size(image_size, patch_size)
    self.patch_size = patch_size
    self.coords = grid.grid_coords(side, side)
    self.patch_embed = Linear(
      patch_size * patch_size * channels, dim, dtype=dtype, kernel_init=dense_init, rngs=rngs
    )
    self.pos_embed = nnx.Param(embedding_init(rngs.params(), (side * side, dim)))
    self.cls_token = nnx.Param(embedding_init(rngs.params(), (dim,)))
    self.emb_dropout = nnx.Dropout(emb_dropout)
    heads = dict(num_heads=num_heads, head_dim=head_dim)
    # The reference's to_q is its own Linear, keys and values one to_kv: Xavier-normal over
    # the fused (dim, 2 * inner).
    kv_init = fused_dense_init(2)

    def talking_heads():
      return dict(
        pre_softmax=TalkingHeads(num_heads, rngs=rngs),
        post_softmax=TalkingHeads(num_heads, rngs=rngs),
      )

    def block(layer, attn):
      return LayerScaleBlock(
        dim,
        attn,
        Mlp(dim, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs),
        layer_scale=layer_scale_init(layer),
        drop_path_rate=stochastic_depth,
        dtype=dtype,
        rngs=rngs,
      )

    self.patch_layers = nnx.List(
      [
        block(
          i + 1,
          make_attention(
            attention,
            mask,
            dim=dim,
            grid_shape=(side, side),
            dropout=dropout,
            dtype=dtype,
            rngs=rngs,
            key_value_init=kv_init,
            **heads,
            **talking_heads(),
          ),
        )
        for i in range(depth)
      ]
    )
    # Class attention is cross-attention from CLS to the patches: the configured score,
    # never a grid mask.
    self.class_layers = nnx.List(
      [
        block(
          i + 1,
          Attention(
            dim,
            score=make_score(
              attention, dim=dim, dtype=dtype, rngs=rngs, kernel_init=kv_init, **heads
            ),
            qkv_bias=attention.qkv_bias,
            dropout=dropout,
            dtype=dtype,
            value_init=kv_init,
            rngs=rngs,
            **heads,
            **talking_heads(),
          ),
        )
        for i in range(class_depth)
      ]
    )
    self.norm = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.head = Linear(dim, num_classes, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.dtype = dtype

  def __call__(
    self,
    images: jax.Array,
    *,
    token_index: jax.Array | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """(B, H, W, C) float images -> (B, num_classes) logits.

    token_index: (B, K) indices of the patches to keep (row-major grid order); the
      others are removed before the patch layers, and class attention sees only these.
    """
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.patch_embed(patchify(images.astype(self.dtype), self.patch_size))
    pos = self.pos_embed[...]
    coords = jnp.asarray(self.coords)
    if token_index is not None:
      x = take_tokens(x, token_index)
      pos = pos[token_index]
      coords = coords[token_index]
    x = self.emb_dropout(x + pos.astype(x.dtype), **kw)
    for layer in self.patch_layers:
      x = layer(x, coords, **kw)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    for layer in self.class_layers:
      cls = layer(cls, None, context=x, **kw)
    return self.head(self.norm(cls[:, 0])).astype(jnp.float32)
