"""The small-dataset Swin Transformer of the GMM paper: shifted-window attention in stages.

    images (B, H, W, C) -> Conv patch embedding + LayerNorm -> (B, L, C0) + absolute pos
    stage s: blocks of window attention at (h_s, w_s) tokens, odd blocks on windows
             shifted by window // 2; then patch merging (2x2 -> 1, C -> 2C), except
             after the last stage
    LayerNorm -> token mean -> Linear

Inside a window the logits are q.k^T/sqrt(D), masked (GMM / ELM on the window's own
grid, the same for every window), then the relative position bias and, on shifted
windows, the -100 shift mask are added; the mask never sees the bias.

Windows: B batch, h, w token grid, ws window side, nW = (h/ws)*(w/ws) windows per image,
N = ws*ws tokens per window, H heads. Windows of one image are consecutive, row-major.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gmm_vit_jax.attention import Attention, grid, make_attention
from gmm_vit_jax.initializers import torch_default_init
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import EncoderBlock, Mlp
from gmm_vit_jax.models.tokens import check_patch_size

# timm's trunc_normal_(std=.02) truncates at +-2 in absolute terms, 100 standard
# deviations: in effect a plain normal.
position_init = nnx.initializers.normal(stddev=0.02)
# The value the reference adds to logits of token pairs that a cyclic shift brought
# together from opposite image borders.
SHIFT_MASK_VALUE = -100.0


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """(B, h, w, C) -> (B*nW, ws*ws, C), windows row-major, tokens row-major in a window."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """(B*nW, ws*ws, C) -> (B, h, w, C): the inverse of window_partition."""
  c = windows.shape[-1]
  x = windows.reshape(-1, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window: int) -> np.ndarray:
  """(N, N) int32: row of the ((2ws-1)^2, H) bias table for each token pair of a window."""
  coords = grid.grid_coords(window, window)
  delta = coords[:, None, :] - coords[None, :, :] + (window - 1)
  return (delta[..., 0] * (2 * window - 1) + delta[..., 1]).astype(np.int32)


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """(nW, N, N) float32: 0 where two tokens of a shifted window may attend, else -100.

  After rolling the grid by -shift, the last `shift` rows and columns hold tokens
  from the opposite border; the image is cut into 3 x 3 regions at -window and -shift
  and only pairs from the same region attend.
  """

  def bands(size):
    band = np.zeros(size, np.int32)
    band[size - window :] = 1
    band[size - shift :] = 2
    return band

  region = bands(height)[:, None] * 3 + bands(width)[None, :]
  windows = window_partition(region[None, :, :, None], window)[..., 0]
  same = windows[:, :, None] == windows[:, None, :]
  return np.where(same, 0.0, SHIFT_MASK_VALUE).astype(np.float32)


def stage_grids(image_size: int, patch_size: int, num_stages: int) -> list[int]:
  """Token grid side of each stage: the patch grid, halved by every patch merging."""
  side = check_patch_size(image_size, patch_size)
  if side % 2 ** (num_stages - 1):
    raise ValueError(
      f'the {side}x{side} token grid cannot be halved {num_stages - 1} '
      'times; change model.patch_size or model.depths.'
    )
  return [side // 2**s for s in range(num_stages)]


def stage_window(grid_shape: tuple[int, int], window_size: int) -> tuple[int, int]:
  """(window side, shift of the odd blocks) of a stage at `grid_shape` tokens.

  As the reference: a grid no larger than the window is one unshifted window.
  """
  h, w = grid_shape
  window = min(h, w) if min(h, w) <= window_size else window_size
  if h % window or w % window:
    raise ValueError(
      f'model.window_size={window_size} does not tile the {h}x{w} token '
      'grid of a stage; choose a divisor of the grid side.'
    )
  return window, window // 2 if min(h, w) > window_size else 0


class WindowAttention(nnx.Module):
  """(Shifted) window multi-head self-attention over a (h, w) token grid.

  `mha` is the attention layer every window shares; this module owns the relative
  position bias table, the cyclic shift and its mask.
  """

  def __init__(
    self,
    mha: Attention,
    *,
    grid_shape: tuple[int, int],
    window: int,
    shift: int,
    num_heads: int,
    rngs: nnx.Rngs,
  ):
    self.mha = mha
    self.relative_position_bias = nnx.Param(
      position_init(rngs.params(), ((2 * window - 1) ** 2, num_heads))
    )
    self.grid_shape = grid_shape
    self.window = window
    self.shift = shift
    self.bias_index = relative_position_index(window)
    self.shift_mask = shift_mask(*grid_shape, window, shift) if shift else None

  def logit_bias(self, batch: int) -> jax.Array:
    """(B*nW, H, N, N) or (1, H, N, N): relative position bias plus the shift mask."""
    table = self.relative_position_bias[...]
    bias = table[self.bias_index].transpose(2, 0, 1)[None].astype(jnp.float32)
    if self.shift_mask is None:
      return bias
    return jnp.tile(bias + jnp.asarray(self.shift_mask)[:, None], (batch, 1, 1, 1))

  def to_windows(self, x: jax.Array) -> jax.Array:
    """(B, h*w, C) -> (B*nW, N, C), after the cyclic shift."""
    h, w = self.grid_shape
    x = x.reshape(x.shape[0], h, w, x.shape[-1])
    if self.shift:
      x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
    return window_partition(x, self.window)

  def from_windows(self, windows: jax.Array) -> jax.Array:
    """(B*nW, N, C) -> (B, h*w, C), undoing the cyclic shift."""
    h, w = self.grid_shape
    x = window_reverse(windows, self.window, h, w)
    if self.shift:
      x = jnp.roll(x, (self.shift, self.shift), axis=(1, 2))
    return x.reshape(x.shape[0], h * w, x.shape[-1])

  def attention_weights(self, x: jax.Array, coords: jax.Array) -> jax.Array:
    """(B, h*w, C) tokens, (N, 2) window coords -> (B*nW, H, N, N) weights."""
    return self.mha.attention_weights(self.to_windows(x), coords, self.logit_bias(x.shape[0]))

  def __call__(
    self,
    x: jax.Array,
    coords: jax.Array,
    *,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    """(B, h*w, C) tokens, (N, 2) coordinates inside a window -> (B, h*w, C)."""
    out = self.mha(
      self.to_windows(x),
      coords,
      bias=self.logit_bias(x.shape[0]),
      deterministic=deterministic,
      rngs=rngs,
    )
    return self.from_windows(out)


class PatchMerging(nnx.Module):
  """(B, h*w, C) -> (B, h/2*w/2, 2C): each 2x2 neighbourhood concatenated, normed, projected.

  Concatenation order (row, col) offsets (0,0), (1,0), (0,1), (1,1), as the reference.
  """

  def __init__(self, dim: int, *, grid_shape: tuple[int, int], dtype, rngs: nnx.Rngs):
    self.grid_shape = grid_shape
    self.norm = LayerNorm(4 * dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.reduction = Linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h, w = self.grid_shape
    b, _, c = x.shape
    x = x.reshape(b, h, w, c)
    x = jnp.concatenate(
      [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
    )
    return self.reduction(self.norm(x.reshape(b, (h // 2) * (w // 2), 4 * c)))


class SwinStage(nnx.Module):
  """Window-attention blocks at one resolution (shift on odd blocks), then patch merging."""

  def __init__(
    self,
    dim: int,
    *,
    grid_shape: tuple[int, int],
    depth: int,
    num_heads: int,
    window_size: int,
    mlp_ratio: float,
    dropout: float,
    drop_path_rates: list[float],
    downsample: bool,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype,
    rngs: nnx.Rngs,
  ):
    window, shift = stage_window(grid_shape, window_size)
    if dim % num_heads:
      raise ValueError(f'model.num_heads={num_heads} does not divide the stage width {dim}.')
    self.coords = grid.grid_coords(window, window)
    self.blocks = nnx.List(
      [
        EncoderBlock(
          dim,
          WindowAttention(
            make_attention(
              attention,
              mask,
              dim=dim,
              num_heads=num_heads,
              head_dim=dim // num_heads,
              grid_shape=(window, window),
              dropout=dropout,
              dtype=dtype,
              rngs=rngs,
            ),
            grid_shape=grid_shape,
            window=window,
            shift=shift if i % 2 else 0,
            num_heads=num_heads,
            rngs=rngs,
          ),
          Mlp(dim, int(dim * mlp_ratio), dropout=dropout, dtype=dtype, rngs=rngs),
          drop_path_rate=drop_path_rates[i],
          dtype=dtype,
          rngs=rngs,
        )
        for i in range(depth)
      ]
    )
    self.downsample = (
      PatchMerging(dim, grid_shape=grid_shape, dtype=dtype, rngs=rngs) if downsample else None
    )

  def __call__(
    self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    coords = jnp.asarray(self.coords)
    for block in self.blocks:
      x = block(x, coords, deterministic=deterministic, rngs=rngs)
    return x if self.downsample is None else self.downsample(x)


class Swin(nnx.Module):
  """Swin with absolute position embedding; stage s has width embed_dim * 2^s."""

  # Patch selection may only zero its pixels: its layers need the full token grid.
  can_drop_tokens = False

  def __init__(
    self,
    *,
    image_size: int,
    patch_size: int,
    channels: int,
    num_classes: int,
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window_size: int,
    mlp_ratio: float,
    dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if len(depths) != len(num_heads):
      raise ValueError(
        f'model.depths={tuple(depths)} and model.num_heads={tuple(num_heads)} '
        'must name the same number of stages.'
      )
    grids = stage_grids(image_size, patch_size, len(depths))
    self.patch_embed = nnx.Conv(
      channels,
      embed_dim,
      (patch_size, patch_size),
      strides=(patch_size, patch_size),
      padding='VALID',
      dtype=dtype,
      rngs=rngs,
    )
    self.patch_norm = LayerNorm(embed_dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(position_init(rngs.params(), (grids[0] ** 2, embed_dim)))
    self.dropout = nnx.Dropout(dropout)
    # Stochastic depth grows linearly from 0 at the first block to the rate at the last.
    rates = np.linspace(0.0, stochastic_depth, sum(depths)).tolist()
    stages = []
    for s, (depth, heads) in enumerate(zip(depths, num_heads)):
      first = sum(depths[:s])
      stages.append(
        SwinStage(
          embed_dim * 2**s,
          grid_shape=(grids[s],) * 2,
          depth=depth,
          num_heads=heads,
          window_size=window_size,
          mlp_ratio=mlp_ratio,
          dropout=dropout,
          drop_path_rates=rates[first : first + depth],
          downsample=s < len(depths) - 1,
          attention=attention,
          mask=mask,
          dtype=dtype,
          rngs=rngs,
        )
      )
    self.stages = nnx.List(stages)
    num_features = embed_dim * 2 ** (len(depths) - 1)
    self.norm = LayerNorm(num_features, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.head = Linear(num_features, num_classes, dtype=dtype, rngs=rngs)
    # The reference Swin keeps PyTorch's default Linear/Conv initialisation.
    torch_default_init(self, rngs)
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

    token_index: not supported: shifted windows and patch merging need the full grid.
    """
    if token_index is not None:
      raise ValueError(
        'Swin attends inside windows of the full token grid and cannot drop '
        'patches; turn patch selection off for model.name=swin.'
      )
    x = self.patch_embed(images.astype(self.dtype))
    x = self.patch_norm(x.reshape(x.shape[0], -1, x.shape[-1]))
    x = self.dropout(
      x + self.pos_embed[...].astype(x.dtype), deterministic=deterministic, rngs=rngs
    )
    for stage in self.stages:
      x = stage(x, deterministic=deterministic, rngs=rngs)
    return self.head(jnp.mean(self.norm(x), axis=1)).astype(jnp.float32)
