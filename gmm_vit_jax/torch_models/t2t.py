"""PyTorch twin of the reference T2T-ViT, with the reference's state_dict names.

Images are NCHW floats. torch.nn.functional.unfold(3, stride 2, padding 1) splits the
image into a grid half its side; each token transformer re-embeds that grid's tokens and
the next unfold halves it again; a Linear embeds the last grid's tokens for the encoder,
which classifies their mean. The masks act in every attention layer, each on its grid.

State dict (l indexes token transformers, i encoder layers; N_l tokens on the grid of
token transformer l, N encoder tokens, E = embed_dim, T = token_dim, K kernels, H heads):
  tokens_to_token.attention{l+1}.mask               (1, 1, N_l, N_l) sqrt(exp(-d2)), fixed
  tokens_to_token.attention{l+1}.norm1.{weight,bias} over the unfolded width (9 C or 9 T)
  tokens_to_token.attention{l+1}.attn.qkv.weight    (3 T, 9 C or 9 T): q, k, v, no bias
  tokens_to_token.attention{l+1}.attn.proj.{weight,bias}
  tokens_to_token.attention{l+1}.attn.mask.{sigma,alpha} (K, 1, 1, 1), GMM; with .mask
  tokens_to_token.attention{l+1}.attn.mask.mask     (N_l, N_l), ELM
  tokens_to_token.attention{l+1}.norm2, .mlp.fc1, .mlp.fc2
  tokens_to_token.norm.{weight,bias}                LayerNorm (9 T), never applied
  tokens_to_token.project.{weight,bias}             Linear 9 T -> E
  cls_token (1, 1, E), never used; pos_embed (1, N, E) sinusoidal, fixed
  mask                                              (1, 1, N, N), fixed
  blocks.i.norm1, .attn.qkv.weight (3 E, E), .attn.proj, .attn.mask.*, .norm2, .mlp.fc{1,2}
  norm.{weight,bias}, head.{weight,bias}
The reference stores its fixed tensors as frozen Parameters, buffers here: the same
state_dict, and the same count of trainable parameters. Its encoder attention is 256
wide whatever E is, so it runs only at E = 256; the twin's is E wide.
"""

import ml_collections
import torch
from torch import nn

from gmm_vit_jax.attention.masks import MASK_KINDS
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.models.t2t import (
  UNFOLD_KERNEL,
  UNFOLD_PADDING,
  UNFOLD_STRIDE,
  sinusoid_position_embedding,
  unfolded_side,
)
from gmm_vit_jax.torch_models.swin import Mlp
from gmm_vit_jax.torch_models.vit import (
  ElementwiseMask,
  GaussianMixtureMask,
  base_mask,
  check_reference_mask,
  drop_path,
)

TWO_TOKEN_LAYERS_IMAGE_SIZE = 64


def reference_token_layers(image_size: int) -> int:
  """The reference's token transformers: two for 64x64 images, one otherwise."""
  return 2 if image_size == TWO_TOKEN_LAYERS_IMAGE_SIZE else 1


def check_reference_config(model: ml_collections.ConfigDict, *, image_size: int) -> None:
  """Raises ValueError when `model` (a T2T config) describes no reference T2T-ViT."""
  check_reference_mask(model.mask)
  if model.attention.score != 'dot_product' or model.attention.qkv_bias:
    raise ValueError(
      f'model.attention={model.attention.to_dict()}: the reference T2T-ViT has '
      "score='dot_product' and qkv_bias=False."
    )
  expected = reference_token_layers(image_size)
  if model.num_token_layers != expected:
    raise ValueError(
      f'model.num_token_layers={model.num_token_layers}: the reference has '
      f'{expected} at {image_size}x{image_size}.'
    )
  if model.num_heads == 1:
    raise ValueError(
      "model.num_heads=1: the reference's one-head encoder attention adds its "
      'values, not its input, as the skip; use more heads.'
    )
  if model.embed_dim % model.num_heads:
    raise ValueError(
      f'model.num_heads={model.num_heads} does not divide model.embed_dim={model.embed_dim}.'
    )


class Attention(nn.Module):
  """(B, N, dim) -> (B, N, out_dim), with a skip: the values for one head, else the input.

  One head maps the wider unfolded tokens to out_dim, so only its values fit as the
  skip. The logit scale is 1/sqrt(dim / num_heads), from the input width.
  """

  def __init__(
    self, dim: int, out_dim: int, num_heads: int, dropout: float, mask: nn.Module | None
  ):
    super().__init__()
    self.num_heads = num_heads
    self.out_dim = out_dim
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * out_dim, bias=False)
    self.proj = nn.Linear(out_dim, out_dim)
    self.proj_drop = nn.Dropout(dropout)
    self.mask = mask

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.out_dim // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    logits = (q * self.scale) @ k.transpose(-2, -1)
    if self.mask is not None:
      logits = self.mask(logits)
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.out_dim)
    out = self.proj_drop(self.proj(out))
    skip = v.transpose(1, 2).reshape(b, n, self.out_dim) if self.num_heads == 1 else x
    return out + skip


def _layer_mask(
  kind: str, num_heads: int, num_kernels: int, base: torch.Tensor, num_tokens: int
) -> nn.Module | None:
  if kind == 'gmm':
    return GaussianMixtureMask(num_heads, num_kernels, base)
  if kind == 'elm':
    return ElementwiseMask(num_tokens)
  return None


class TokenTransformer(nn.Module):
  """(B, N, 9 C_in) -> (B, N, token_dim) on a side x side grid: one head, no dropout."""

  def __init__(self, in_dim: int, token_dim: int, *, side: int, mask_kind: str, num_kernels: int):
    super().__init__()
    self.register_buffer('mask', base_mask(side))
    self.norm1 = nn.LayerNorm(in_dim)
    self.attn = Attention(
      in_dim, token_dim, 1, 0.0, _layer_mask(mask_kind, 1, num_kernels, self.mask, side * side)
    )
    self.norm2 = nn.LayerNorm(token_dim)
    self.mlp = Mlp(token_dim, token_dim, 0.0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


def _unfold(x: torch.Tensor) -> torch.Tensor:
  """(B, C, H, W) -> (B, H'*W', C*3*3) tokens, features in (c, ki, kj) order."""
  return nn.functional.unfold(
    x, UNFOLD_KERNEL, padding=UNFOLD_PADDING, stride=UNFOLD_STRIDE
  ).transpose(1, 2)


class TokensToToken(nn.Module):
  """(B, C, H, W) images -> (B, S*S, embed_dim), S = H / 2^(num_layers + 1)."""

  def __init__(
    self,
    *,
    image_size: int,
    channels: int,
    num_layers: int,
    token_dim: int,
    embed_dim: int,
    mask_kind: str,
    num_kernels: int,
  ):
    super().__init__()
    taps = UNFOLD_KERNEL * UNFOLD_KERNEL
    self.sides = [unfolded_side(image_size)]
    for layer in range(num_layers):
      in_dim = (channels if layer == 0 else token_dim) * taps
      self.add_module(
        f'attention{layer + 1}',
        TokenTransformer(
          in_dim, token_dim, side=self.sides[-1], mask_kind=mask_kind, num_kernels=num_kernels
        ),
      )
      self.sides.append(unfolded_side(self.sides[-1]))
    self.num_layers = num_layers
    self.norm = nn.LayerNorm(token_dim * taps)
    self.project = nn.Linear(token_dim * taps, embed_dim)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = _unfold(images)
    for layer in range(self.num_layers):
      x = getattr(self, f'attention{layer + 1}')(x)
      side = self.sides[layer]
      x = _unfold(x.transpose(1, 2).reshape(x.shape[0], -1, side, side))
    return self.project(x)


class Block(nn.Module):
  """x + drop(attn(norm1(x))), the attention adding its input; then x + drop(mlp(norm2(x)))."""

  def __init__(
    self,
    dim: int,
    *,
    num_heads: int,
    mlp_ratio: float,
    dropout: float,
    drop_path_rate: float,
    mask: nn.Module | None,
  ):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)
    self.attn = Attention(dim, dim, num_heads, dropout, mask)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
    self.drop_path_rate = drop_path_rate

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
    return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class T2T(nn.Module):
  """(B, C, H, W) float images -> (B, num_classes) logits."""

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
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    stochastic_depth: float,
  ):
    """Stochastic depth rises linearly from 0 to `stochastic_depth` over the encoder."""
    super().__init__()
    check_choice('mask_kind', mask_kind, MASK_KINDS)
    self.tokens_to_token = TokensToToken(
      image_size=image_size,
      channels=channels,
      num_layers=num_token_layers,
      token_dim=token_dim,
      embed_dim=embed_dim,
      mask_kind=mask_kind,
      num_kernels=num_kernels,
    )
    side = self.tokens_to_token.sides[-1]
    num_tokens = side * side
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.register_buffer(
      'pos_embed', torch.from_numpy(sinusoid_position_embedding(num_tokens, embed_dim))[None]
    )
    self.pos_drop = nn.Dropout(dropout)
    self.register_buffer('mask', base_mask(side))
    rates = torch.linspace(0.0, stochastic_depth, depth).tolist()
    self.blocks = nn.ModuleList(
      Block(
        embed_dim,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        drop_path_rate=rate,
        mask=_layer_mask(mask_kind, num_heads, num_kernels, self.mask, num_tokens),
      )
      for rate in rates
    )
    self.norm = nn.LayerNorm(embed_dim)
    self.head = nn.Linear(embed_dim, num_classes)
    nn.init.trunc_normal_(self.cls_token, std=0.02)
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.pos_drop(self.tokens_to_token(images) + self.pos_embed)
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x).mean(dim=1))

  @classmethod
  def from_config(
    cls, model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
  ) -> 'T2T':
    """The twin of `gmm_vit_jax.models.T2T` built from the same config section."""
    check_reference_config(model, image_size=image_size)
    return cls(
      image_size=image_size,
      channels=channels,
      num_classes=num_classes,
      num_token_layers=model.num_token_layers,
      token_dim=model.token_dim,
      embed_dim=model.embed_dim,
      depth=model.depth,
      num_heads=model.num_heads,
      mlp_ratio=model.mlp_ratio,
      mask_kind=model.mask.kind,
      num_kernels=model.mask.num_kernels,
      dropout=model.dropout,
      stochastic_depth=model.stochastic_depth,
    )
