"""PyTorch twin of the reference small-dataset CaiT (plain, GMM, ELM), with its state_dict names.

Images are NCHW floats. The mask acts on the patch layers' logits before the
pre-softmax head mix; class attention takes its keys and values from the patch
tokens as they are (no LayerNorm, no CLS).

State dict (T is patch_transformer with i < depth, or cls_transformer with
i < class_depth; N tokens, H heads, I = H * head_dim, K kernels):
  pos_embedding                      (1, N, dim)
  cls_token                          (1, 1, dim)
  mask                               (1, 1, N, N) sqrt(exp(-d2)), not trained
  to_patch_embedding.1.{weight,bias} Linear on (p1 p2 c)-ordered patch pixels
  T.layers.i.0.scale                 (1, 1, dim) LayerScale of the attention branch
  T.layers.i.0.fn.norm.{weight,bias}
  T.layers.i.0.fn.fn.mix_heads_{pre,post}_attn  (H, H): out[g] = sum_h in[h] w[h, g]
  T.layers.i.0.fn.fn.to_q.weight     (I, dim), no bias
  T.layers.i.0.fn.fn.to_kv.weight    (2 I, dim): k, v stacked, no bias
  T.layers.i.0.fn.fn.to_out.0.{weight,bias}
  T.layers.i.0.fn.fn.mask.{sigma,alpha}  (K, H, 1, 1), patch layers of a GMM; .mask = `mask`
  T.layers.i.0.fn.fn.mask.mask       (N, N), patch layers of an ELM
  T.layers.i.1.scale                 (1, 1, dim) LayerScale of the MLP branch
  T.layers.i.1.fn.norm.{weight,bias}
  T.layers.i.1.fn.fn.net.{0,3}.{weight,bias}
  mlp_head.0.{weight,bias} (LayerNorm), mlp_head.1.{weight,bias} (Linear)
"""

import ml_collections
import torch
from torch import nn

from gmm_vit_jax.models.cait import layer_scale_init
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.vit import (
  ElementwiseMask,
  FeedForward,
  GaussianMixtureMask,
  Patchify,
  PreNorm,
  Transformer,
  base_mask,
  check_reference_mask,
)


def check_reference_config(model: ml_collections.ConfigDict) -> None:
  """Raises ValueError when `model` (a CaiT config) describes no reference CaiT."""
  check_reference_mask(model.mask)
  if model.attention.score != 'dot_product' or model.attention.qkv_bias:
    raise ValueError(
      f'model.attention={model.attention.to_dict()}: the reference CaiT has '
      "score='dot_product' and qkv_bias=False."
    )


class TalkingHeadsAttention(nn.Module):
  """Attention whose logits and weights are mixed across heads; keys from a context."""

  def __init__(
    self, dim: int, num_heads: int, head_dim: int, dropout: float, mask: nn.Module | None
  ):
    super().__init__()
    inner = num_heads * head_dim
    self.num_heads = num_heads
    self.scale = head_dim**-0.5
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
    self.mix_heads_pre_attn = nn.Parameter(torch.randn(num_heads, num_heads))
    self.mix_heads_post_attn = nn.Parameter(torch.randn(num_heads, num_heads))
    self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
    self.mask = mask

  def _heads(self, x: torch.Tensor) -> torch.Tensor:
    """(B, N, H * D) -> (B, H, N, D)."""
    return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, dim) queries, (B, M, dim) key/value tokens (x when None) -> (B, N, dim)."""
    q = self._heads(self.to_q(x))
    k, v = map(self._heads, self.to_kv(x if context is None else context).chunk(2, dim=-1))
    logits = q @ k.transpose(-2, -1) * self.scale
    if self.mask is not None:
      logits = self.mask(logits)
    logits = torch.einsum('bhij,hg->bgij', logits, self.mix_heads_pre_attn)
    weights = torch.einsum('bhij,hg->bgij', logits.softmax(dim=-1), self.mix_heads_post_attn)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return self.to_out(out)


class LayerScale(nn.Module):
  """fn(x, **kwargs) times a learnable (1, 1, dim) scale."""

  def __init__(self, dim: int, fn: nn.Module, layer: int):
    super().__init__()
    self.scale = nn.Parameter(torch.full((1, 1, dim), layer_scale_init(layer)))
    self.fn = fn

  def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return self.fn(x, **kwargs) * self.scale


class CaiT(nn.Module):
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
    class_depth: int,
    num_heads: int,
    head_dim: int,
    mlp_dim: int,
    mask_kind: str,
    num_kernels: int,
    dropout: float,
    emb_dropout: float,
    stochastic_depth: float,
  ):
    super().__init__()
    side = check_patch_size(image_size, patch_size)
    num_tokens = side * side
    self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, dim))
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    # Stored in every checkpoint, and shared by the GMM layers as their base.
    self.register_buffer('mask', base_mask(side))
    self.to_patch_embedding = nn.Sequential(
      Patchify(patch_size), nn.Linear(patch_size * patch_size * channels, dim)
    )
    self.dropout = nn.Dropout(emb_dropout)

    def layer_mask():
      if mask_kind == 'gmm':
        return GaussianMixtureMask(num_heads, num_kernels, self.mask)
      if mask_kind == 'elm':
        return ElementwiseMask(num_tokens)
      return None

    def layers(count, masked):
      # LayerScale starts from the 1-based index inside each transformer.
      return Transformer(
        [
          (
            LayerScale(
              dim,
              PreNorm(
                dim,
                TalkingHeadsAttention(
                  dim, num_heads, head_dim, dropout, layer_mask() if masked else None
                ),
              ),
              i + 1,
            ),
            LayerScale(dim, PreNorm(dim, FeedForward(dim, mlp_dim, dropout)), i + 1),
          )
          for i in range(count)
        ],
        stochastic_depth,
      )

    self.patch_transformer = layers(depth, masked=True)
    self.cls_transformer = layers(class_depth, masked=False)
    self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
    for module in self.modules():
      if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = self.dropout(self.to_patch_embedding(images) + self.pos_embedding)
    x = self.patch_transformer(x)
    cls = self.cls_transformer(self.cls_token.expand(x.shape[0], -1, -1), context=x)
    return self.mlp_head(cls[:, 0])

  @classmethod
  def from_config(
    cls, model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
  ) -> 'CaiT':
    """The twin of `gmm_vit_jax.models.CaiT` built from the same config section."""
    check_reference_config(model)
    return cls(
      image_size=image_size,
      patch_size=model.patch_size,
      channels=channels,
      num_classes=num_classes,
      dim=model.dim,
      depth=model.depth,
      class_depth=model.class_depth,
      num_heads=model.num_heads,
      head_dim=model.head_dim,
      mlp_dim=model.mlp_dim,
      mask_kind=model.mask.kind,
      num_kernels=model.mask.num_kernels,
      dropout=model.dropout,
      emb_dropout=model.emb_dropout,
      stochastic_depth=model.stochastic_depth,
    )
