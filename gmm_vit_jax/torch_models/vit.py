"""PyTorch twin of the reference small-dataset ViT, with the reference's state_dict names.

A reference checkpoint loads into it with `load_state_dict`, so it tests the
converter and times the PyTorch side. Images are NCHW floats. As in the reference,
the masked variants (GMM, ELM) drop the CLS token and classify the token mean.

State dict (i indexes layers; N tokens, H heads, K kernels, I = H * head_dim):
  mask                                        (1, 1, N, N) sqrt(exp(-d2)), not trained
  to_patch_embedding.1.{weight,bias}          Linear on (p1 p2 c)-ordered patch pixels
  pos_embedding                               (1, N + 1, dim) plain, (1, N, dim) masked
  cls_token                                   (1, 1, dim), plain only
  transformer.layers.i.0.norm.{weight,bias}
  transformer.layers.i.0.fn.to_qkv.weight     (3 I, dim): q, k, v stacked, no bias
  transformer.layers.i.0.fn.to_out.0.{weight,bias}
  transformer.layers.i.0.fn.mask.{sigma,alpha} (K, H, 1, 1), GMM; with .mask = `mask`
  transformer.layers.i.0.fn.mask.mask         (N, N), ELM
  transformer.layers.i.1.norm.{weight,bias}
  transformer.layers.i.1.fn.net.{0,3}.{weight,bias}
  mlp_head.0.{weight,bias} (LayerNorm), mlp_head.1.{weight,bias} (Linear)
"""

import ml_collections
import torch
from torch import nn

from gmm_vit_jax.attention.masks import MASK_KINDS, SIGMA_EPS
from gmm_vit_jax.errors import check_choice


def check_reference_mask(
  mask: ml_collections.ConfigDict, kinds: tuple[str, ...] = MASK_KINDS
) -> None:
  """Raises ValueError when `model.mask` is no mask of the reference code."""
  check_choice('model.mask.kind', mask.kind, kinds)
  if mask.kind != 'none' and mask.mode != 'multiply':
    raise ValueError(
      f'model.mask.mode={mask.mode!r}: the reference multiplies its '
      "mask into the logits; use 'multiply'."
    )
  if mask.kind == 'gmm' and not mask.cutoff:
    raise ValueError(
      'model.mask.cutoff=False: the float32 reference zeroes pairs with d2 >= 104; use True.'
    )


def check_reference_config(model: ml_collections.ConfigDict) -> None:
  """Raises ValueError when `model` (a ViT config) describes no reference ViT."""
  check_reference_mask(model.mask)
  pool = 'cls' if model.mask.kind == 'none' else 'mean'
  if model.pool != pool:
    raise ValueError(
      f'model.pool={model.pool!r}: the reference ViT with mask.kind='
      f'{model.mask.kind!r} pools {pool!r}.'
    )
  if model.attention.score != 'dot_product' or model.attention.qkv_bias:
    raise ValueError(
      f'model.attention={model.attention.to_dict()}: the reference ViT has '
      "score='dot_product' and qkv_bias=False."
    )
  if model.num_heads == 1 and model.head_dim == model.dim:
    raise ValueError(
      'model.num_heads=1 with head_dim == dim: the reference then has no '
      'output projection, which the ViT here always has.'
    )


def base_mask(side: int) -> torch.Tensor:
  """(1, 1, N, N) float32 sqrt(exp(-d2)) over a side x side grid, row-major.

  The float32 exp is 0 from d2 = 104 on: the reference's distance cut-off.
  """
  rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing='ij')
  coords = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
  sq_dist = (coords[:, None, :] - coords[None, :, :]).square().sum(-1)
  return torch.exp(-sq_dist).sqrt()[None, None]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
  """Stochastic depth: keeps each example's branch with probability 1 - rate, rescaled."""
  if not training or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
  return x * mask.to(x.dtype) / keep


class Patchify(nn.Module):
  """(B, C, H, W) -> (B, (H/p) (W/p), p p C), pixels in (p1, p2, c) order."""

  def __init__(self, patch_size: int):
    super().__init__()
    self.patch_size = patch_size

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    b, c, h, w = images.shape
    p = self.patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class GaussianMixtureMask(nn.Module):
  """G = sum_k alpha_k * base^(1 / (sigma_k^2 + eps)), multiplied into (B, H, N, N) logits.

  base^(1/(s^2+eps)) = exp(-d2 / (2 (s^2 + eps))): raising the stored base mask is
  how the reference evaluates the Gaussian, cut-off included.
  """

  def __init__(self, num_heads: int, num_kernels: int, mask: torch.Tensor):
    super().__init__()
    self.sigma = nn.Parameter(10.0 + 10.0 * torch.randn(num_kernels, num_heads, 1, 1))
    self.alpha = nn.Parameter(2.0 * torch.randn(num_kernels, num_heads, 1, 1))
    self.register_buffer('mask', mask)

  def forward(self, logits: torch.Tensor) -> torch.Tensor:
    kernels = self.mask.pow(1.0 / (self.sigma.square() + SIGMA_EPS))
    return (self.alpha * kernels).sum(0) * logits


class ElementwiseMask(nn.Module):
  """ELM: one learnable (N, N) matrix, zero-initialised, multiplied into the logits."""

  def __init__(self, num_tokens: int):
    super().__init__()
    self.mask = nn.Parameter(torch.zeros(num_tokens, num_tokens))

  def forward(self, logits: torch.Tensor) -> torch.Tensor:
    return self.mask * logits


class Attention(nn.Module):
  """Multi-head self-attention from one fused qkv Linear, with an optional logit mask."""

  def __init__(
    self, dim: int, num_heads: int, head_dim: int, dropout: float, mask: nn.Module | None
  ):
    super().__init__()
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.scale = head_dim**-0.5
    self.to_qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=False)
    self.to_out = nn.Sequential(nn.Linear(num_heads * head_dim, dim), nn.Dropout(dropout))
    self.mask = mask

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, N, dim) -> (B, N, dim)."""
    b, n, _ = x.shape
    qkv = self.to_qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) * self.scale
    if self.mask is not None:
      logits = self.mask(logits)
    out = logits.softmax(dim=-1) @ v
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
  def __init__(self, dim: int, hidden: int, dropout: float):
    super().__init__()
    self.net = nn.Sequential(
      nn.Linear(dim, hidden),
      nn.GELU(),
      nn.Dropout(dropout),
      nn.Linear(hidden, dim),
      nn.Dropout(dropout),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


class PreNorm(nn.Module):
  """fn(norm(x), **kwargs): keyword inputs (CaiT's context) pass through unnormalised."""

  def __init__(self, dim: int, fn: nn.Module):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.fn = fn

  def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return self.fn(self.norm(x), **kwargs)


class Transformer(nn.Module):
  """Pre-norm blocks; every residual branch shares one stochastic-depth rate.

  Keyword inputs of `forward` go to every attention branch (CaiT's context).
  """

  def __init__(self, blocks: list[tuple[nn.Module, nn.Module]], stochastic_depth: float):
    super().__init__()
    self.layers = nn.ModuleList(
      nn.ModuleList([attention, feed_forward]) for attention, feed_forward in blocks
    )
    self.stochastic_depth = stochastic_depth

  def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
    for attention, feed_forward in self.layers:
      x = x + drop_path(attention(x, **kwargs), self.stochastic_depth, self.training)
      x = x + drop_path(feed_forward(x), self.stochastic_depth, self.training)
    return x


class ViT(nn.Module):
  """(B, C, H, W) float images -> (B, num_classes) logits."""

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
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
  ):
    super().__init__()
    check_choice('mask_kind', mask_kind, MASK_KINDS)
    side = image_size // patch_size
    num_tokens = side * side
    self.pool = 'cls' if mask_kind == 'none' else 'mean'
    # Stored in every checkpoint, and shared by the GMM layers as their base.
    self.register_buffer('mask', base_mask(side))
    self.to_patch_embedding = nn.Sequential(
      Patchify(patch_size), nn.Linear(patch_size * patch_size * channels, dim)
    )
    self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens + (self.pool == 'cls'), dim))
    if self.pool == 'cls':
      self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.dropout = nn.Dropout(emb_dropout)

    def layer_mask():
      if mask_kind == 'gmm':
        return GaussianMixtureMask(num_heads, num_kernels, self.mask)
      if mask_kind == 'elm':
        return ElementwiseMask(num_tokens)
      return None

    self.transformer = Transformer(
      [
        (
          PreNorm(dim, Attention(dim, num_heads, head_dim, dropout, layer_mask())),
          PreNorm(dim, FeedForward(dim, int(dim * mlp_ratio), dropout)),
        )
        for _ in range(depth)
      ],
      stochastic_depth,
    )
    self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.to_patch_embedding(images)
    if self.pool == 'cls':
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.dropout(x + self.pos_embedding)
    x = self.transformer(x)
    x = x[:, 0] if self.pool == 'cls' else x.mean(dim=1)
    return self.mlp_head(x)

  @classmethod
  def from_config(
    cls, model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
  ) -> 'ViT':
    """The twin of `gmm_vit_jax.models.ViT` built from the same config section."""
    check_reference_config(model)
    return cls(
      image_size=image_size,
      patch_size=model.patch_size,
      channels=channels,
      num_classes=num_classes,
      dim=model.dim,
      depth=model.depth,
      num_heads=model.num_heads,
      head_dim=model.head_dim,
      mlp_ratio=model.mlp_ratio,
      mask_kind=model.mask.kind,
      num_kernels=model.mask.num_kernels,
      dropout=model.dropout,
      emb_dropout=model.emb_dropout,
      stochastic_depth=model.stochastic_depth,
    )
