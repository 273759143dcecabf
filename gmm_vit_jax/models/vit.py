"""The small-dataset ViT of the GMM paper, plain (CLS token) and masked (mean pooling).

Plain: patches -> Linear -> [CLS; tokens] + pos -> encoder -> LayerNorm -> Linear on x[:, 0].
GMM / ELM: no CLS token and no CLS position embedding; the head reads the token mean.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gmm_vit_jax.attention import grid, make_attention
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.initializers import dense_init, embedding_init, fused_dense_init
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import EncoderBlock, Mlp
from gmm_vit_jax.models.tokens import check_patch_size, patchify, take_tokens

POOLS = ('cls', 'mean')


class ViT(nnx.Module):
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
    num_heads: int,
    head_dim: int,
    mlp_ratio: float,
    pool: str,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    check_choice('model.pool', pool, POOLS)
    side = check_patch_size(image_size, patch_size)
    self.patch_size = patch_size
    self.pool = pool
    self.grid_side = side
    num_pos = side * side + (pool == 'cls')
    self.patch_embed = Linear(
      patch_size * patch_size * channels, dim, dtype=dtype, kernel_init=dense_init, rngs=rngs
    )
    self.pos_embed = nnx.Param(embedding_init(rngs.params(), (num_pos, dim)))
    self.cls_token = nnx.Param(embedding_init(rngs.params(), (dim,))) if pool == 'cls' else None
    self.emb_dropout = nnx.Dropout(emb_dropout)
    # The reference's one to_qkv Linear: Xavier-normal over the fused (dim, 3 * inner).
    qkv_init = fused_dense_init(3)
    self.blocks = nnx.List(
      [
        EncoderBlock(
          dim,
          make_attention(
            attention,
            mask,
            dim=dim,
            num_heads=num_heads,
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
      others are removed from the sequence before the encoder.
    """
    patches = patchify(images.astype(self.dtype), self.patch_size)
    pos = self.pos_embed[...]
    patch_pos = pos[1:] if self.pool == 'cls' else pos
    coords = jnp.asarray(grid.grid_coords(self.grid_side, self.grid_side))
    if token_index is not None:
      # Gathering pixels before the embedding spares the dropped tokens' projection too.
      patches = take_tokens(patches, token_index)
      patch_pos = patch_pos[token_index]
      coords = coords[token_index]
    x = self.patch_embed(patches) + patch_pos.astype(self.dtype)
    if self.pool == 'cls':
      cls = jnp.broadcast_to(self.cls_token[...] + pos[0], (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
      coords = grid.with_leading_tokens(coords)
    x = self.emb_dropout(x, deterministic=deterministic, rngs=rngs)
    for block in self.blocks:
      x = block(x, coords, deterministic=deterministic, rngs=rngs)
    x = x[:, 0] if self.pool == 'cls' else jnp.mean(x, axis=1)
    return self.head(self.norm(x)).astype(jnp.float32)
