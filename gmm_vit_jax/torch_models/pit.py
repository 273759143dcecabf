"""PyTorch twin of the reference PiT, with the reference's state_dict names.

Images are NCHW floats. Stage s runs on an S_s x S_s grid (S_0 = image / patch, each
pooling takes ceil(S / 2)) with the CLS token in front; its masks act on the patch
tokens only, so the CLS row and column of the logits pass through unmasked.

State dict (s indexes stages, i layers in a stage; N_s = S_s^2 tokens, C_s = dim * 2^s
wide, H_s heads, K kernels, I_s = H_s * head_dim):
  to_patch_embedding.0.{weight,bias}          Conv2d (dim, channels, p, p), stride p
  pos_embedding (1, N_0 + 1, dim), cls_token (1, 1, dim)
  layers.{2s}.mask                            (1, 1, N_s, N_s) sqrt(exp(-d2)), not trained
  layers.{2s}.layers.i.0.norm.{weight,bias}
  layers.{2s}.layers.i.0.fn.to_qkv.weight     (3 I_s, C_s): q, k, v stacked, no bias
  layers.{2s}.layers.i.0.fn.to_out.0.{weight,bias}
  layers.{2s}.layers.i.0.fn.mask.{sigma,alpha} (K, H_s, 1, 1), GMM; with .mask = the stage's
  layers.{2s}.layers.i.0.fn.mask.mask         (N_s, N_s), ELM
  layers.{2s}.layers.i.1.norm.{weight,bias}
  layers.{2s}.layers.i.1.fn.net.{0,3}.{weight,bias}
  layers.{2s+1}.downsample.net.0.{weight,bias} depthwise Conv2d (2 C_s, 1, 3, 3), stride 2
  layers.{2s+1}.downsample.net.1.{weight,bias} pointwise Conv2d (2 C_s, 2 C_s, 1, 1)
  layers.{2s+1}.cls_ff.{weight,bias}          Linear C_s -> 2 C_s on the CLS token
  mlp_head.0.{weight,bias} (LayerNorm), mlp_head.1.{weight,bias} (Linear)
The reference stores its base masks as frozen Parameters, buffers here: the same
state_dict, and the same count of trainable parameters.
"""

import ml_collections
import torch
from torch import nn

from gmm_vit_jax.attention.masks import MASK_KINDS
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.models.pit import pooled_side
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.vit import (
  Attention,
  ElementwiseMask,
  FeedForward,
  GaussianMixtureMask,
  PreNorm,
  Transformer,
  base_mask,
  check_reference_mask,
)


def check_reference_config(model: ml_collections.ConfigDict) -> None:
  """Raises ValueError when `model` (a PiT config) describes no reference PiT."""
  check_reference_mask(model.mask)
  if model.attention.score != 'dot_product' or model.attention.qkv_bias:
    raise ValueError(
      f'model.attention={model.attention.to_dict()}: the reference PiT has '
      "score='dot_product' and qkv_bias=False."
    )
  if len(model.num_heads) != len(model.depths):
    raise ValueError(
      f'model.num_heads={tuple(model.num_heads)} needs one entry per stage of '
      f'model.depths={tuple(model.depths)}.'
    )
  for s, heads in enumerate(model.num_heads):
    if heads == 1 and model.head_dim == model.dim * 2**s:
      raise ValueError(
        f'model.num_heads[{s}]=1 with head_dim equal to the stage width: the '
        'reference then has no output projection, which the PiT here has.'
      )


def _on_patch_block(mask_fn, logits: torch.Tensor) -> torch.Tensor:
  """mask_fn on the (B, H, N, N) patch block of (B, H, 1 + N, 1 + N) logits."""
  out = logits.clone()
  out[:, :, 1:, 1:] = mask_fn(logits[:, :, 1:, 1:])
  return out


class PatchGaussianMixtureMask(GaussianMixtureMask):
  """The GMM on the patch tokens; pairs with the CLS token keep their logits."""

  def forward(self, logits: torch.Tensor) -> torch.Tensor:
    return _on_patch_block(super().forward, logits)


class PatchElementwiseMask(ElementwiseMask):
  """The ELM on the patch tokens; pairs with the CLS token keep their logits."""

  def forward(self, logits: torch.Tensor) -> torch.Tensor:
    return _on_patch_block(super().forward, logits)


class Stage(Transformer):
  """The blocks of one grid size, which own that grid's base mask."""

  def __init__(
    self,
    *,
    side: int,
    dim: int,
    depth: int,
    num_heads: int,
    head_dim: int,
    mlp_ratio: float,
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    stochastic_depth: float,
  ):
    mask = base_mask(side)

    def layer_mask():
      if mask_kind == 'gmm':
        return PatchGaussianMixtureMask(num_heads, num_kernels, mask)
      if mask_kind == 'elm':
        return PatchElementwiseMask(side * side)
      return None

    super().__init__(
      [
        (
          PreNorm(dim, Attention(dim, num_heads, head_dim, dropout, layer_mask())),
          PreNorm(dim, FeedForward(dim, int(dim * mlp_ratio), dropout)),
        )
        for _ in range(depth)
      ],
      stochastic_depth,
    )
    self.register_buffer('mask', mask)


class DepthwiseSeparable(nn.Module):
  """3x3 stride-2 depthwise conv (channel multiplier 2), then a pointwise conv; NCHW."""

  def __init__(self, dim: int):
    super().__init__()
    self.net = nn.Sequential(
      nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, groups=dim),
      nn.Conv2d(2 * dim, 2 * dim, kernel_size=1),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


class Pool(nn.Module):
  """(B, 1 + S*S, C) -> (B, 1 + S'*S', 2C): CLS token by a Linear, patches by convolutions."""

  def __init__(self, dim: int):
    super().__init__()
    self.downsample = DepthwiseSeparable(dim)
    self.cls_ff = nn.Linear(dim, 2 * dim)

  def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
    b, _, c = x.shape
    grid = x[:, 1:].transpose(1, 2).reshape(b, c, side, side)
    tokens = self.downsample(grid).flatten(2).transpose(1, 2)
    return torch.cat([self.cls_ff(x[:, :1]), tokens], dim=1)


class Tokens(nn.Module):
  """(B, C, H, W) -> (B, H*W, C), row-major."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class PiT(nn.Module):
  """(B, C, H, W) float images -> (B, num_classes) logits."""

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
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
  ):
    super().__init__()
    check_choice('mask_kind', mask_kind, MASK_KINDS)
    side = check_patch_size(image_size, patch_size)
    self.to_patch_embedding = nn.Sequential(
      nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size), Tokens()
    )
    self.pos_embedding = nn.Parameter(torch.randn(1, side * side + 1, dim))
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.dropout = nn.Dropout(emb_dropout)
    # Stages at even and poolings at odd indices, as the reference numbers them.
    self.layers = nn.ModuleList()
    self.sides = []
    for s, (depth, heads) in enumerate(zip(depths, num_heads)):
      if s:
        self.layers.append(Pool(dim))
        side, dim = pooled_side(side), 2 * dim
      self.sides.append(side)
      self.layers.append(
        Stage(
          side=side,
          dim=dim,
          depth=depth,
          num_heads=heads,
          head_dim=head_dim,
          mlp_ratio=mlp_ratio,
          mask_kind=mask_kind,
          num_kernels=num_kernels,
          dropout=dropout,
          stochastic_depth=stochastic_depth,
        )
      )
    self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    for module in self.modules():
      if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.to_patch_embedding(images)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.dropout(x + self.pos_embedding)
    for index, layer in enumerate(self.layers):
      x = layer(x, self.sides[index // 2]) if isinstance(layer, Pool) else layer(x)
    return self.mlp_head(x[:, 0])

  @classmethod
  def from_config(
    cls, model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
  ) -> 'PiT':
    """The twin of `gmm_vit_jax.models.PiT` built from the same config section."""
    check_reference_config(model)
    return cls(
      image_size=image_size,
      patch_size=model.patch_size,
      channels=channels,
      num_classes=num_classes,
      dim=model.dim,
      depths=tuple(model.depths),
      num_heads=tuple(model.num_heads),
      head_dim=model.head_dim,
      mlp_ratio=model.mlp_ratio,
      mask_kind=model.mask.kind,
      num_kernels=model.mask.num_kernels,
      dropout=model.dropout,
      emb_dropout=model.emb_dropout,
      stochastic_depth=model.stochastic_depth,
    )
