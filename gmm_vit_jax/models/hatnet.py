"""HAT-Net: hierarchical multi-head self-attention (H-MHSA) on convolutional stages.

    stem (3x3 conv, GroupNorm, SiLU, 3x3 conv) -> stage 0 -> downsample -> stage 1 -> ...
    -> global average pool -> dropout -> Linear

Feature maps are NHWC, (B, S, S, C). A block is x + drop(H-MHSA(x)), then
x + drop(InvertedResidual(x)). H-MHSA with window (grid) size G and pooling ratio r:

    h      = GroupNorm(x)
    local  = GroupNorm(x + MHSA within each G x G window of h)   (no output projection)
    pooled = GroupNorm(AvgPool_r(local))
    global = MHSA with queries from local (every position), keys and values from pooled
    out    = proj(global + local)

A stage with G = 1 has no windows: it runs one MHSA over the whole map,
out = proj(MHSA(h)), and ignores its pooling ratio. The masks (GMM, ELM) and the score
function go in the windowed self-attention, on the window's G x G grid; in a G = 1 stage
on the whole map's grid (the window is the map). The pooled attention attends from one
grid to another and stays plain scaled dot-product attention.

Every Linear and conv weight is drawn from a normal with std 0.02, biases zero, as the
reference does. Parameter layout against its state_dict (1x1 convs are Linears here,
conv kernels HWIO against torch's OIHW):
  patch_embed.0, .1, .3           -> stem_conv1, stem_norm, stem_conv2
  blocks.{s}.{i}.attn.norm        -> stages[s][i].attention.norm
  blocks.{s}.{i}.attn.qkv         -> stages[s][i].attention.attention.{query, score.key,
                                     value} (torch's weight split in three along its rows)
  blocks.{s}.{i}.attn.grid_norm, .ds_norm -> .attention.grid_norm, .attention.pool_norm
  blocks.{s}.{i}.attn.q, .kv      -> .attention.global_query, .attention.{global_key,
                                     global_value} (kv split in two along its rows)
  blocks.{s}.{i}.attn.proj        -> .attention.proj
  blocks.{s}.{i}.conv.conv1.{0,1} -> stages[s][i].mlp.norm_in, .mlp.expand
  blocks.{s}.{i}.conv.conv2.0     -> stages[s][i].mlp.depthwise
  blocks.{s}.{i}.conv.conv3.{0,1} -> stages[s][i].mlp.reduce, .mlp.norm_out
  ds{s+2}.conv, ds{s+2}.norm      -> downsamples[s].conv, downsamples[s].norm
  classifier.1                    -> head
The reference's attn.proj_norm is built but never used in its forward pass; it has no
counterpart here (a converter drops it).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gmm_vit_jax.attention import grid, make_attention
from gmm_vit_jax.initializers import reinit_kernels, small_normal_init
from gmm_vit_jax.linear import Linear
from gmm_vit_jax.models.layers import DepthwiseConv, drop_path

STEM_WIDTH = 16
GROUP_NORM_EPS = 1e-6


def conv_side(side: int, stride: int) -> int:
  """Map side after a 3x3 convolution with padding 1."""
  return (side - 1) // stride + 1


def window_partition(x: jax.Array, size: int) -> jax.Array:
  """(B, H, W, C) -> (B * H/size * W/size, size*size, C).

  Windows in row-major order per example, tokens in row-major order inside a window.
  """
  b, h, w, c = x.shape
  x = x.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, size * size, c)


def window_merge(windows: jax.Array, height: int, width: int) -> jax.Array:
  """Inverse of window_partition: (B * nW, size*size, C) -> (B, height, width, C)."""
  size = int(round(windows.shape[1] ** 0.5))
  c = windows.shape[-1]
  x = windows.reshape(-1, height // size, width // size, size, size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def avg_pool(x: jax.Array, ratio: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/ratio, W/ratio, C): mean over non-overlapping ratio x ratio cells."""
  b, h, w, c = x.shape
  return x.reshape(b, h // ratio, ratio, w // ratio, ratio, c).mean(axis=(2, 4))


def group_norm(dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm(1, C): statistics over all of an example's positions and channels."""
  return nnx.GroupNorm(dim, num_groups=1, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)


class HierarchicalAttention(nnx.Module):
  """H-MHSA on a (B, S, S, C) map; see the module docstring."""

  def __init__(
    self,
    dim: int,
    *,
    head_dim: int,
    side: int,
    grid_size: int,
    ds_ratio: int,
    dropout: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype,
    rngs: nnx.Rngs,
  ):
    self.num_heads = dim // head_dim
    self.grid_size = grid_size
    self.ds_ratio = ds_ratio
    self.window = grid_size if grid_size > 1 else side
    self.norm = group_norm(dim, dtype=dtype, rngs=rngs)
    self.attention = make_attention(
      attention,
      mask,
      dim=dim,
      num_heads=self.num_heads,
      head_dim=head_dim,
      grid_shape=(self.window, self.window),
      dropout=dropout,
      dtype=dtype,
      rngs=rngs,
      project_out=False,
    )
    hierarchical = grid_size > 1
    linear = lambda: Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.grid_norm = group_norm(dim, dtype=dtype, rngs=rngs) if hierarchical else None
    self.pool_norm = group_norm(dim, dtype=dtype, rngs=rngs) if hierarchical else None
    self.global_query = linear() if hierarchical else None
    self.global_key = linear() if hierarchical else None
    self.global_value = linear() if hierarchical else None
    self.proj = linear()
    # Dropout2d: whole channels of an example.
    self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2))

  def __call__(
    self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """(B, S, S, C) -> (B, S, S, C)."""
    b, h, w, c = x.shape
    kw = dict(deterministic=deterministic, rngs=rngs)
    coords = jnp.asarray(grid.grid_coords(self.window, self.window))
    windows = window_partition(self.norm(x), self.window)
    out = window_merge(self.attention(windows, coords, **kw), h, w)
    if self.grid_size > 1:
      local = self.grid_norm(x + out)
      pooled = self.pool_norm(avg_pool(local, self.ds_ratio)).reshape(b, -1, c)
      heads = lambda t: t.reshape(b, -1, self.num_heads, c // self.num_heads)
      out = jax.nn.dot_product_attention(
        heads(self.global_query(local.reshape(b, h * w, c))),
        heads(self.global_key(pooled)),
        heads(self.global_value(pooled)),
      )
      out = out.reshape(b, h, w, c) + local
    return self.dropout(self.proj(out), **kw)


class InvertedResidual(nnx.Module):
  """GroupNorm, 1x1 expand, SiLU, depthwise kxk, SiLU, 1x1 reduce, GroupNorm; NHWC."""

  def __init__(
    self, dim: int, hidden: int, *, kernel_size: int, dropout: float, dtype, rngs: nnx.Rngs
  ):
    pad = (kernel_size - 1) // 2
    self.norm_in = group_norm(dim, dtype=dtype, rngs=rngs)
    self.expand = Linear(dim, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.depthwise = DepthwiseConv(
      hidden,
      hidden,
      (kernel_size, kernel_size),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
    )
    self.reduce = Linear(hidden, dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm_out = group_norm(dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2))

  def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = jax.nn.silu(self.expand(self.norm_in(x)))
    x = self.dropout(jax.nn.silu(self.depthwise(x)), **kw)
    return self.dropout(self.norm_out(self.reduce(x)), **kw)


class HATBlock(nnx.Module):
  def __init__(
    self, attention: HierarchicalAttention, mlp: InvertedResidual, *, drop_path_rate: float
  ):
    self.attention = attention
    self.mlp = mlp
    self.drop_path_rate = drop_path_rate

  def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = x + drop_path(self.attention(x, **kw), self.drop_path_rate, **kw)
    return x + drop_path(self.mlp(x, **kw), self.drop_path_rate, **kw)


class Downsample(nnx.Module):
  """3x3 stride-2 convolution and GroupNorm: (B, S, S, C) -> (B, S', S', C_out)."""

  def __init__(self, dim: int, out_dim: int, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(
      dim, out_dim, (3, 3), strides=2, padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs
    )
    self.norm = group_norm(out_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.conv(x))


def _per_stage(field: str, values: Sequence, count: int) -> tuple:
  if len(values) != count:
    raise ValueError(
      f'model.{field}={tuple(values)} needs one entry per stage ({count}, as model.dims).'
    )
  return tuple(values)


class HATNet(nnx.Module):
  # Patch selection may only zero its pixels: its layers need the full token grid.
  can_drop_tokens = False

  def __init__(
    self,
    *,
    image_size: int,
    channels: int,
    num_classes: int,
    stem_strides: tuple[int, int],
    dims: tuple[int, ...],
    head_dim: int,
    depths: tuple[int, ...],
    expansions: tuple[int, ...],
    kernel_sizes: tuple[int, ...],
    grid_sizes: tuple[int, ...],
    ds_ratios: tuple[int, ...],
    dropout: float,
    head_dropout: float,
    stochastic_depth: float,
    attention: ml_collections.ConfigDict,
    mask: ml_collections.ConfigDict,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Per-stage settings are sequences with one entry per stage.

    Stochastic depth rises linearly from 0 to `stochastic_depth` over all blocks.
    """
    n = len(dims)
    depths, expansions, kernel_sizes, grid_sizes, ds_ratios = (
      _per_stage(f, v, n)
      for f, v in (
        ('depths', depths),
        ('expansions', expansions),
        ('kernel_sizes', kernel_sizes),
        ('grid_sizes', grid_sizes),
        ('ds_ratios', ds_ratios),
      )
    )
    for dim in dims:
      if dim % head_dim:
        raise ValueError(f'model.head_dim={head_dim} does not divide model.dims={tuple(dims)}.')
    if len(stem_strides) != 2:
      raise ValueError(
        f'model.stem_strides={tuple(stem_strides)} needs two entries, one per stem convolution.'
      )
    sides = [conv_side(conv_side(image_size, stem_strides[0]), stem_strides[1])]
    for _ in range(n - 1):
      sides.append(conv_side(sides[-1], 2))
    for s, (side, g, r) in enumerate(zip(sides, grid_sizes, ds_ratios)):
      if g > 1 and (side % g or side % r):
        raise ValueError(
          f'stage {s} has a {side}x{side} map: model.grid_sizes[{s}]={g} and '
          f'model.ds_ratios[{s}]={r} must divide {side}.'
        )
    self.stem_conv1 = nnx.Conv(
      channels,
      STEM_WIDTH,
      (3, 3),
      strides=stem_strides[0],
      padding=((1, 1), (1, 1)),
      dtype=dtype,
      rngs=rngs,
    )
    self.stem_norm = group_norm(STEM_WIDTH, dtype=dtype, rngs=rngs)
    self.stem_conv2 = nnx.Conv(
      STEM_WIDTH,
      dims[0],
      (3, 3),
      strides=stem_strides[1],
      padding=((1, 1), (1, 1)),
      dtype=dtype,
      rngs=rngs,
    )
    rates = iter(np.linspace(0.0, stochastic_depth, sum(depths)))
    self.stages = nnx.List(
      [
        nnx.List(
          [
            HATBlock(
              HierarchicalAttention(
                dims[s],
                head_dim=head_dim,
                side=sides[s],
                grid_size=grid_sizes[s],
                ds_ratio=ds_ratios[s],
                dropout=dropout,
                attention=attention,
                mask=mask,
                dtype=dtype,
                rngs=rngs,
              ),
              InvertedResidual(
                dims[s],
                dims[s] * expansions[s],
                kernel_size=kernel_sizes[s],
                dropout=dropout,
                dtype=dtype,
                rngs=rngs,
              ),
              drop_path_rate=float(next(rates)),
            )
            for _ in range(depths[s])
          ]
        )
        for s in range(n)
      ]
    )
    self.downsamples = nnx.List(
      [Downsample(dims[s], dims[s + 1], dtype=dtype, rngs=rngs) for s in range(n - 1)]
    )
    self.head_dropout = nnx.Dropout(head_dropout)
    self.head = Linear(dims[-1], num_classes, dtype=dtype, rngs=rngs)
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
        'HAT-Net cannot drop tokens: its convolutions and windows need the '
        'full map. Turn patch selection off for model.name=hatnet.'
      )
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = self.stem_conv1(images.astype(self.dtype))
    x = self.stem_conv2(jax.nn.silu(self.stem_norm(x)))
    for s, blocks in enumerate(self.stages):
      if s:
        x = self.downsamples[s - 1](x)
      for block in blocks:
        x = block(x, **kw)
    x = self.head_dropout(jnp.mean(x, axis=(1, 2)), **kw)
    return self.head(x).astype(jnp.float32)
