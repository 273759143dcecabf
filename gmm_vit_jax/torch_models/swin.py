"""PyTorch twin of the reference small-dataset Swin (plain and GMM), with its state_dict names.

Images are NCHW floats. The GMM multiplies each window's logits by the mixture over
the window's own grid, before the relative position bias and the shift mask are
added. The reference's ELM Swin does not build, so this twin has none.

State dict (i indexes stages, j blocks; C stage width, H heads, ws window side,
N = ws * ws, nW windows per image, L tokens of the first stage, K kernels):
  mask                                   (1, 1, N, N) sqrt(exp(-d2)) over the
                                         model.window_size grid, not trained
  patch_embed.proj.{weight,bias}         Conv2d (C, channels, p, p), stride p
  patch_embed.norm.{weight,bias}
  absolute_pos_embed                     (1, L, C)
  layers.i.blocks.j.norm1.{weight,bias}
  layers.i.blocks.j.attn.relative_position_bias_table  ((2 ws - 1)^2, H)
  layers.i.blocks.j.attn.relative_position_index       (N, N) int64, not trained
  layers.i.blocks.j.attn.mask.{sigma,alpha}            (K, H, 1, 1), GMM; with .mask = `mask`
  layers.i.blocks.j.attn.qkv.{weight,bias}             (3 C, C): q, k, v stacked
  layers.i.blocks.j.attn.proj.{weight,bias}
  layers.i.blocks.j.norm2.{weight,bias}
  layers.i.blocks.j.mlp.fc{1,2}.{weight,bias}
  layers.i.blocks.j.attn_mask            (nW, N, N) 0 / -100, shifted blocks only
  layers.i.downsample.reduction.weight   (2 C, 4 C), no bias; every stage but the last
  layers.i.downsample.norm.{weight,bias}
  norm.{weight,bias}, head.{weight,bias}
"""

import ml_collections
import torch
from torch import nn

from gmm_vit_jax.models.swin import relative_position_index, shift_mask, stage_grids, stage_window
from gmm_vit_jax.torch_models.vit import (
  GaussianMixtureMask,
  base_mask,
  check_reference_mask,
  drop_path,
)


def check_reference_config(model: ml_collections.ConfigDict, image_size: int) -> None:
  """Raises ValueError when `model` (a Swin config) describes no reference Swin."""
  if model.mask.kind == 'elm':
    raise ValueError(
      "model.mask.kind='elm': the reference Swin's ELM does not build (it "
      "squares its window tuple); only 'none' and 'gmm' have reference weights."
    )
  check_reference_mask(model.mask, ('none', 'gmm'))
  if model.attention.score != 'dot_product':
    raise ValueError(
      f"model.attention.score={model.attention.score!r}: the reference Swin has 'dot_product'."
    )
  if len(model.depths) != len(model.num_heads):
    raise ValueError(
      f'model.depths={tuple(model.depths)} and model.num_heads='
      f'{tuple(model.num_heads)} must name the same number of stages.'
    )
  grids = stage_grids(image_size, model.patch_size, len(model.depths))
  for s, heads in enumerate(model.num_heads):
    if (model.embed_dim * 2**s) % heads:
      raise ValueError(
        f'model.num_heads={heads} does not divide the stage width {model.embed_dim * 2**s}.'
      )
  if model.mask.kind == 'gmm' and min(grids) < model.window_size:
    raise ValueError(
      f'model.window_size={model.window_size} is larger than the '
      f'{min(grids)}x{min(grids)} grid of the last stage: the reference GMM '
      'shares one window_size^2 base mask, which does not fit that window.'
    )


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
  """(B, h, w, C) -> (B * nW, ws * ws, C), windows row-major, tokens row-major in a window."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
  """(B * nW, ws * ws, C) -> (B, h, w, C): the inverse of window_partition."""
  c = windows.shape[-1]
  x = windows.reshape(-1, height // window, width // window, window, window, c)
  return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class Mlp(nn.Module):
  """fc1 -> GELU -> Dropout -> fc2 -> Dropout."""

  def __init__(self, dim: int, hidden: int, dropout: float):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)
    self.drop = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
  """Multi-head self-attention inside each window, with the relative position bias."""

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    window: int,
    qkv_bias: bool,
    dropout: float,
    mask: nn.Module | None,
  ):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.mask = mask
    self.relative_position_bias_table = nn.Parameter(
      nn.init.trunc_normal_(torch.empty((2 * window - 1) ** 2, num_heads), std=0.02)
    )
    self.register_buffer(
      'relative_position_index', torch.from_numpy(relative_position_index(window)).long()
    )
    self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(dropout)

  def forward(self, x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """(B * nW, N, C) windows, (nW, N, N) shift mask or None -> (B * nW, N, C)."""
    bw, n, c = x.shape
    q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) * self.scale
    if self.mask is not None:
      logits = self.mask(logits)
    bias = self.relative_position_bias_table[self.relative_position_index]
    logits = logits + bias.permute(2, 0, 1)[None]
    if shift is not None:
      # Windows of one image are consecutive, so the (nW, N, N) mask repeats per image.
      logits = logits.reshape(-1, shift.shape[0], self.num_heads, n, n) + shift[None, :, None]
      logits = logits.reshape(bw, self.num_heads, n, n)
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
    return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
  """Pre-norm block: window attention on the (cyclically shifted) grid, then the MLP."""

  def __init__(
    self,
    dim: int,
    *,
    grid_side: int,
    num_heads: int,
    window: int,
    shift: int,
    mlp_ratio: float,
    qkv_bias: bool,
    dropout: float,
    drop_path_rate: float,
    mask: nn.Module | None,
  ):
    super().__init__()
    self.grid_side = grid_side
    self.window = window
    self.shift = shift
    self.drop_path_rate = drop_path_rate
    self.norm1 = nn.LayerNorm(dim)
    self.attn = WindowAttention(
      dim, num_heads=num_heads, window=window, qkv_bias=qkv_bias, dropout=dropout, mask=mask
    )
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
    self.register_buffer(
      'attn_mask',
      torch.from_numpy(shift_mask(grid_side, grid_side, window, shift)) if shift else None,
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L, C), L = grid_side^2."""
    b, l, c = x.shape
    side, shift = self.grid_side, self.shift
    y = self.norm1(x).reshape(b, side, side, c)
    if shift:
      y = torch.roll(y, (-shift, -shift), dims=(1, 2))
    y = self.attn(window_partition(y, self.window), self.attn_mask)
    y = window_reverse(y, self.window, side, side)
    if shift:
      y = torch.roll(y, (shift, shift), dims=(1, 2))
    x = x + drop_path(y.reshape(b, l, c), self.drop_path_rate, self.training)
    return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchMerging(nn.Module):
  """(B, h * w, C) -> (B, h/2 * w/2, 2C): 2x2 neighbours at offsets (0,0), (1,0), (0,1), (1,1)."""

  def __init__(self, dim: int, grid_side: int):
    super().__init__()
    self.grid_side = grid_side
    self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
    self.norm = nn.LayerNorm(4 * dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, _, c = x.shape
    x = x.reshape(b, self.grid_side, self.grid_side, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
  def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None):
    super().__init__()
    self.blocks = nn.ModuleList(blocks)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for block in self.blocks:
      x = block(x)
    return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
  """(B, channels, H, W) -> (B, (H/p) (W/p), C): a stride-p convolution, then LayerNorm."""

  def __init__(self, patch_size: int, channels: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
    self.norm = nn.LayerNorm(dim)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.norm(self.proj(images).flatten(2).transpose(1, 2))


class Swin(nn.Module):
  """(B, C, H, W) float images -> (B, num_classes) logits; stage s has width embed_dim * 2^s."""

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
    qkv_bias: bool,
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    stochastic_depth: float,
  ):
    super().__init__()
    grids = stage_grids(image_size, patch_size, len(depths))
    # Stored in every checkpoint, and shared by the GMM layers as their base.
    self.register_buffer('mask', base_mask(window_size))
    self.patch_embed = PatchEmbed(patch_size, channels, embed_dim)
    self.absolute_pos_embed = nn.Parameter(
      nn.init.trunc_normal_(torch.empty(1, grids[0] ** 2, embed_dim), std=0.02)
    )
    self.pos_drop = nn.Dropout(dropout)
    # Stochastic depth grows linearly from 0 at the first block to the rate at the last.
    rates = torch.linspace(0, stochastic_depth, sum(depths)).tolist()
    stages = []
    for s, (depth, heads, side) in enumerate(zip(depths, num_heads, grids)):
      dim = embed_dim * 2**s
      window, shift = stage_window((side, side), window_size)
      blocks = [
        SwinBlock(
          dim,
          grid_side=side,
          num_heads=heads,
          window=window,
          shift=shift if j % 2 else 0,
          mlp_ratio=mlp_ratio,
          qkv_bias=qkv_bias,
          dropout=dropout,
          drop_path_rate=rates[sum(depths[:s]) + j],
          mask=(GaussianMixtureMask(heads, num_kernels, self.mask) if mask_kind == 'gmm' else None),
        )
        for j in range(depth)
      ]
      stages.append(SwinStage(blocks, PatchMerging(dim, side) if s < len(depths) - 1 else None))
    self.layers = nn.ModuleList(stages)
    num_features = embed_dim * 2 ** (len(depths) - 1)
    self.norm = nn.LayerNorm(num_features)
    self.head = nn.Linear(num_features, num_classes)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.pos_drop(self.patch_embed(images) + self.absolute_pos_embed)
    for stage in self.layers:
      x = stage(x)
    return self.head(self.norm(x).mean(dim=1))

  @classmethod
  def from_config(
    cls, model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
  ) -> 'Swin':
    """The twin of `gmm_vit_jax.models.Swin` built from the same config section."""
    check_reference_config(model, image_size)
    return cls(
      image_size=image_size,
      patch_size=model.patch_size,
      channels=channels,
      num_classes=num_classes,
      embed_dim=model.embed_dim,
      depths=tuple(model.depths),
      num_heads=tuple(model.num_heads),
      window_size=model.window_size,
      mlp_ratio=model.mlp_ratio,
      qkv_bias=model.attention.qkv_bias,
      mask_kind=model.mask.kind,
      num_kernels=model.mask.num_kernels,
      dropout=model.dropout,
      stochastic_depth=model.stochastic_depth,
    )
