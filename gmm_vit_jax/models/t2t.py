"""T2T-ViT of the GMM paper (the reference's T2T_ViT, 32x32 and 64x64 images).

    unfold 3x3/2 -> token transformer -> unfold 3x3/2 [-> token transformer -> unfold 3x3/2]
    -> Linear to embed_dim -> + fixed sinusoidal position -> encoder -> LayerNorm
    -> token mean -> Linear

At 32x32 one token transformer runs on a 16x16 grid and the encoder on 8x8 tokens; at
64x64 (`num_token_layers=2`) a second unfold keeps the encoder's 8x8 grid. No CLS token
(the reference comments it out of its forward pass). The masks act in every attention
layer, the token transformers' too, each on its own grid.

Details of the reference kept here, because its weights and numbers depend on them:
  - Token transformer: one head of width `token_dim`, logit scale 1/sqrt(input width)
    (27 for RGB 3x3 patches, not the head width), output projection token_dim ->
    token_dim, and the values V as the attention's skip connection (the input is wider
    than the output); no dropout, no stochastic depth.
  - Encoder blocks: the same attention class adds its own (normalised) input to its
    output, so a block is x + drop(attn(norm(x)) + norm(x)), then the usual MLP half.
  - Two trainable tensors the forward pass never reads, the CLS token and a LayerNorm
    over the unfolded tokens (tokens_to_token.norm), are kept so that the parameter
    count and the state_dict match the reference.
  - Every Linear weight is drawn from a normal with std 0.02, biases zero.

Unfold ordering: a patch's values are flattened channel-major, (c, ki, kj), and the
patches in row-major order of their top-left corner, as torch.nn.Unfold on NCHW
(followed by the reference's transpose(1, 2)), so converted weights line up.

Parameter layout against the reference's state_dict:
  tokens_to_token.attention{l+1}.norm1, .norm2  -> tokens_to_token.layers[l].norm1, .norm2
  tokens_to_token.attention{l+1}.attn.qkv       -> tokens_to_token.layers[l].attention.
                                                   {query, score.key, value} (torch's weight
                                                   split in three along its rows, transposed)
  tokens_to_token.attention{l+1}.attn.proj      -> tokens_to_token.layers[l].attention.out
  tokens_to_token.attention{l+1}.mlp.fc1, .fc2  -> tokens_to_token.layers[l].mlp.fc1, .fc2
  tokens_to_token.norm, .project                -> tokens_to_token.norm, .project
  cls_token (1, 1, C)                           -> cls_token (C,)
  blocks.{i}.norm1, .norm2, .mlp.fc1, .mlp.fc2  -> blocks[i].norm1, .norm2, .mlp.fc1, .mlp.fc2
  blocks.{i}.attn.qkv, .attn.proj               -> blocks[i].attention.{query, score.key,
                                                   value}, blocks[i].attention.out
  *.attn.mask.{sigma, alpha} (K, H, 1, 1)       -> *.attention.mask.{sigma, alpha} (K, H);
                                                   ELM's *.attn.mask.mask -> *.mask.weight
  norm, head                                    -> norm, head
The fixed buffers (pos_embed, the base masks) are not parameters here.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gmm_vit_jax.attention import grid, make_attention
from gmm_vit_jax.initializers import reinit_kernels, small_normal_init
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import EncoderBlock, Mlp

UNFOLD_KERNEL = 3
UNFOLD_STRIDE = 2
UNFOLD_PADDING = 1
# The value skip adds V (one head's width) to the output: only defined for one head.
TOKEN_HEADS = 1
TOKEN_MLP_RATIO = 1.0


def unfolded_side(side: int) -> int:
  """Grid side after a 3x3 stride-2 unfold with padding 1."""
  return (side + 2 * UNFOLD_PADDING - UNFOLD_KERNEL) // UNFOLD_STRIDE + 1


def unfold(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H'*W', C*3*3): torch.nn.Unfold(3, stride=2, padding=1) as tokens.

  Features are ordered (c, ki, kj), patches row-major; zero padding.
  """
  b, h, w, c = x.shape
  k, s, p = UNFOLD_KERNEL, UNFOLD_STRIDE, UNFOLD_PADDING
  oh, ow = unfolded_side(h), unfolded_side(w)
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  taps = [
    padded[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
    for i in range(k)
    for j in range(k)
  ]
  patches = jnp.stack(taps, axis=-1)  # (B, H', W', C, k*k), taps in (ki, kj) order.
  return patches.reshape(b, oh * ow, c * k * k)


def sinusoid_position_embedding(num_positions: int, dim: int) -> np.ndarray:
  """(num_positions, dim) float32: sin at even, cos at odd features, period 10000^(2i/dim)."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  pair = np.arange(dim) // 2
  angles = pos / np.power(10000.0, 2.0 * pair / dim)[None, :]
  return np.where(np.arange(dim) % 2 == 0, np.sin(angles), np.cos(angles)).astype(np.float32)


class TokenTransformer(nnx.Module):
  """(B, N, C_in) -> (B, N, token_dim): x = attn(norm(x)) + V, then x + mlp(norm(x))."""

  def __init__(
    self,
    in_dim: int,
    token_dim: int,
    *,
    side: int,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.norm1 = LayerNorm(in_dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attention = make_attention(
      attention,
      mask,
      dim=in_dim,
      num_heads=TOKEN_HEADS,
      head_dim=token_dim,
      grid_shape=(side, side),
      dropout=0.0,
      dtype=dtype,
      rngs=rngs,
      scale=in_dim**-0.5,
      out_dim=token_dim,
      skip='values',
    )
    self.norm2 = LayerNorm(token_dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(token_dim, int(token_dim * TOKEN_MLP_RATIO), dtype=dtype, rngs=rngs)

  def __call__(self, x, coords, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.attention(self.norm1(x), coords, **kw)
    return x + self.mlp(self.norm2(x), **kw)


class TokensToToken(nnx.Module):
  """(B, H, W, C) images -> (B, S*S, embed_dim) tokens, S = H / 2^(num_layers + 1)."""

  def __init__(
    self,
    *,
    image_size: int,
    channels: int,
    num_layers: int,
    token_dim: int,
    embed_dim: int,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype,
    rngs: nnx.Rngs,
  ):
    taps = UNFOLD_KERNEL * UNFOLD_KERNEL
    sides = [unfolded_side(image_size)]
    layers = []
    for layer in range(num_layers):
      in_dim = (channels if layer == 0 else token_dim) * taps
      layers.append(
        TokenTransformer(
          in_dim, token_dim, side=sides[-1], attention=attention, mask=mask, dtype=dtype, rngs=rngs
        )
      )
      sides.append(unfolded_side(sides[-1]))
    self.sides = tuple(sides)
    self.layers = nnx.List(layers)
    # Unused by the forward pass, as in the reference; kept for its state_dict and count.
    self.norm = LayerNorm(token_dim * taps, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.project = Linear(token_dim * taps, embed_dim, dtype=dtype, rngs=rngs)

  def __call__(self, images, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    x = unfold(images)
    for side, layer in zip(self.sides, self.layers):
      coords = jnp.asarray(grid.grid_coords(side, side))
      x = layer(x, coords, deterministic=deterministic, rngs=rngs)
      x = unfold(x.reshape(x.shape[0], side, side, x.shape[-1]))
    return self.project(x)


class T2T(nnx.Module):
  # Patch selection may only zero its pixels: its layers need the full token grid.
  can_drop_tokens = False

  def __init__(
    self,
    *,
    image_size: int,
    channels: int,
    num_classes: int,
    num_token_layers: int,
    token_dim: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Stochastic depth rises linearly from 0 to `stochastic_depth` over the encoder."""
    if num_token_layers < 1:
      raise ValueError(f'model.num_token_layers must be >= 1, got {num_token_layers}.')
    if embed_dim % num_heads:
      raise ValueError(f'model.num_heads={num_heads} does not divide model.embed_dim={embed_dim}.')
    self.tokens_to_token = TokensToToken(
      image_size=image_size,
      channels=channels,
      num_layers=num_token_layers,
      token_dim=token_dim,
      embed_dim=embed_dim,
      attention=attention,
      mask=mask,
      dtype=dtype,
      rngs=rngs,
    )
    side = self.tokens_to_token.sides[-1]
    self.side = side
    # Unused by the forward pass, as in the reference; kept for its state_dict and count.
    self.cls_token = nnx.Param(small_normal_init(rngs.params(), (embed_dim,)))
    self.pos_embed = sinusoid_position_embedding(side * side, embed_dim)
    self.pos_dropout = nnx.Dropout(dropout)
    rates = np.linspace(0.0, stochastic_depth, depth)
    self.blocks = nnx.List(
      [
        EncoderBlock(
          embed_dim,
          make_attention(
            attention,
            mask,
            dim=embed_dim,
            num_heads=num_heads,
            head_dim=embed_dim // num_heads,
            grid_shape=(side, side),
            dropout=dropout,
            dtype=dtype,
            rngs=rngs,
            skip='input',
          ),
          Mlp(embed_dim, int(embed_dim * mlp_ratio), dropout=dropout, dtype=dtype, rngs=rngs),
          drop_path_rate=float(rate),
          dtype=dtype,
          rngs=rngs,
        )
        for rate in rates
      ]
    )
    self.norm = LayerNorm(embed_dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.head = Linear(embed_dim, num_classes, dtype=dtype, rngs=rngs)
    self.dtype = dtype
    reinit_kernels(self, small_normal_init, rngs)

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
        'T2T cannot drop tokens: its unfold steps need the full grid. '
        'Turn patch selection off for model.name=t2t.'
      )
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.tokens_to_token(images.astype(self.dtype), **kw)
    x = self.pos_dropout(x + jnp.asarray(self.pos_embed, x.dtype), **kw)
    coords = jnp.asarray(grid.grid_coords(self.side, self.side))
    for block in self.blocks:
      x = block(x, coords, **kw)
    return self.head(jnp.mean(self.norm(x), axis=1)).astype(jnp.float32)
