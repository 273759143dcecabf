"""PiT, the pooling-based ViT of the GMM paper, for 32x32 (and 64x64) images.

    conv patch embedding -> [CLS; tokens] + pos -> stage 0 -> pool -> stage 1 -> pool
    -> stage 2 -> LayerNorm -> Linear on the CLS token

Each pooling halves the grid side (16 -> 8 -> 4 at 32x32) and doubles the width: a
depthwise 3x3 stride-2 convolution with channel multiplier 2, then a pointwise one, on
the patch tokens; a Linear on the CLS token. The masks act on each stage's own grid.
The CLS token has the off-grid coordinates (-1, -1), so its row and column of the
logits pass through unmasked, as the reference's `dots[:, :, 1:, 1:]` does.

Parameter layout against the reference's state_dict (prefix layers.{2s} is stage s,
layers.{2s+1} the pooling after it):
  to_patch_embedding.0               -> patch_embed (kernel HWIO; torch is OIHW)
  pos_embedding (1, N+1, C)          -> pos_embed (N+1, C)
  cls_token (1, 1, C)                -> cls_token (C,)
  layers.{2s}.layers.{i}.0.norm      -> stages[s][i].norm1
  layers.{2s}.layers.{i}.0.fn.to_qkv -> stages[s][i].attention.{query, score.key, value}
                                        (torch's weight split in three along its rows,
                                        each transposed)
  layers.{2s}.layers.{i}.0.fn.to_out.0           -> stages[s][i].attention.out
  layers.{2s}.layers.{i}.0.fn.mask.{sigma,alpha} -> stages[s][i].attention.mask.{sigma,alpha}
                                        ((K, H, 1, 1) -> (K, H)); ELM's mask.mask -> mask.weight
  layers.{2s}.layers.{i}.1.norm      -> stages[s][i].norm2
  layers.{2s}.layers.{i}.1.fn.net.{0,3}          -> stages[s][i].mlp.{fc1, fc2}
  layers.{2s+1}.downsample.net.0     -> pools[s].depthwise (kernel (3, 3, 1, 2C); torch
                                        (2C, 1, 3, 3), same output-channel grouping)
  layers.{2s+1}.downsample.net.1     -> pools[s].pointwise (a Linear; torch's 1x1 conv)
  layers.{2s+1}.cls_ff               -> pools[s].cls
  mlp_head.0, mlp_head.1             -> norm, head
The reference's fixed base masks (`layers.{2s}.mask`, not trainable) have no counterpart:
the masks here are computed from token coordinates.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gmm_vit_jax.attention import grid, make_attention
from gmm_vit_jax.initializers import dense_init, embedding_init, fused_dense_init
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import DepthwiseConv, EncoderBlock, Mlp
from gmm_vit_jax.models.tokens import check_patch_size


def pooled_side(side: int) -> int:
  """Grid side after a 3x3 stride-2 convolution with padding 1."""
  return (side - 1) // 2 + 1


class Pool(nnx.Module):
  """(B, 1 + S*S, C) CLS and patch tokens -> (B, 1 + S'*S', 2C), S' = ceil(S / 2)."""

  def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
    self.depthwise = DepthwiseConv(
      dim,
      2 * dim,
      (3, 3),
      strides=2,
      padding=((1, 1), (1, 1)),
      dtype=dtype,
      kernel_init=dense_init,
      rngs=rngs,
    )
    self.pointwise = Linear(2 * dim, 2 * dim, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.cls = Linear(dim, 2 * dim, dtype=dtype, kernel_init=dense_init, rngs=rngs)

  def __call__(self, x: jax.Array, side: int) -> jax.Array:
    b, _, c = x.shape
    cls = self.cls(x[:, :1])
    tokens = self.pointwise(self.depthwise(x[:, 1:].reshape(b, side, side, c)))
    return jnp.concatenate([cls, tokens.reshape(b, -1, tokens.shape[-1])], axis=1)


class PiT(nnx.Module):
  # Patch selection may only zero its pixels: its layers need the full token grid.
  can_drop_tokens = False

  def __init__(
    self,
    *,
    image_size: int,
    patch_size: int,
    channels: int,
    num_classes: int,
    dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    head_dim: int,
    mlp_ratio: float,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    """`dim` is the first stage's width; every pooling doubles it.

    Stochastic depth is the same rate in every block, as the reference's one DropPath
    per stage.
    """
    if len(num_heads) != len(depths):
      raise ValueError(
        f'model.num_heads={tuple(num_heads)} needs one entry per stage of '
        f'model.depths={tuple(depths)}.'
      )
    side = check_patch_size(image_size, patch_size)
    self.patch_embed = nnx.Conv(
      channels,
      dim,
      (patch_size, patch_size),
      strides=patch_size,
      padding='VALID',
      dtype=dtype,
      kernel_init=dense_init,
      rngs=rngs,
    )
    self.pos_embed = nnx.Param(embedding_init(rngs.params(), (side * side + 1, dim)))
    self.cls_token = nnx.Param(embedding_init(rngs.params(), (dim,)))
    self.emb_dropout = nnx.Dropout(emb_dropout)
    # The reference's one to_qkv Linear: Xavier-normal over the fused (dim, 3 * inner).
    qkv_init = fused_dense_init(3)
    sides, stages, pools = [], [], []
    for s, (depth, heads) in enumerate(zip(depths, num_heads)):
      if s:
        pools.append(Pool(dim, dtype=dtype, rngs=rngs))
        side, dim = pooled_side(side), 2 * dim
      sides.append(side)
      stages.append(
        nnx.List(
          [
            EncoderBlock(
              dim,
              make_attention(
                attention,
                mask,
                dim=dim,
                num_heads=heads,
                head_dim=head_dim,
                grid_shape=(side, side),
                dropout=dropout,
                dtype=dtype,
                rngs=rngs,
                query_init=qkv_init,
                key_value_init=qkv_init,
              ),
              Mlp(dim, int(dim * mlp_ratio), dropout=dropout, dtype=dtype, rngs=rngs),
              drop_path_rate=stochastic_depth,
              dtype=dtype,
              rngs=rngs,
            )
            for _ in range(depth)
          ]
        )
      )
    self.sides = tuple(sides)
    self.stages = nnx.List(stages)
    self.pools = nnx.List(pools)
    self.norm = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.head = Linear(dim, num_classes, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.dtype = dtype

  def stage_coords(self, stage: int) -> jax.Array:
    """(1 + S*S, 2): the CLS token off the grid, then stage `stage`'s S x S grid."""
    side = self.sides[stage]
    return grid.with_leading_tokens(jnp.asarray(grid.grid_coords(side, side)))

  def __call__(
    self,
    images: jax.Array,
    *,
    token_index: jax.Array | None = None,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """(B, H, W, C) float images -> (B, num_classes) logits."""
    if token_index is not None:
      raise ValueError(
        'PiT cannot drop tokens: its pooling convolutions need the full grid. '
        'Turn patch selection off for model.name=pit.'
      )
    x = self.patch_embed(images.astype(self.dtype))
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, c)
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, c)).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    x = self.emb_dropout(x, deterministic=deterministic, rngs=rngs)
    for s, blocks in enumerate(self.stages):
      if s:
        x = self.pools[s - 1](x, self.sides[s - 1])
      coords = self.stage_coords(s)
      for block in blocks:
        x = block(x, coords, deterministic=deterministic, rngs=rngs)
    return self.head(self.norm(x[:, 0])).astype(jnp.float32)
