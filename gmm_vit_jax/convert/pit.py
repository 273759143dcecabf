"""PiT: `gmm_vit_jax.models.PiT` <-> the reference's models/pit.py state_dict.

Its blocks are laid out as the ViT's (fused qkv, GMM sigma and alpha with two unit
axes); convolutions are (out, in, kh, kw) in torch where nnx.Conv kernels are
(kh, kw, in, out); the pooling's 1x1 convolution is a Linear here; every stage
stores its grid's base mask.
"""

import ml_collections

from gmm_vit_jax.convert import core
from gmm_vit_jax.convert.vit import block_rules
from gmm_vit_jax.models.pit import pooled_side
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.pit import check_reference_config
from gmm_vit_jax.torch_models.vit import base_mask


def pointwise_conv(flax: str, torch: str) -> list[core.Rule]:
  """nnx.Linear kernel (in, out) <-> torch 1x1 Conv2d weight (out, in, 1, 1), and bias."""
  return [
    core.Rule(
      (f'{flax}.kernel',),
      (f'{torch}.weight',),
      lambda w: (w[:, :, 0, 0].T,),
      lambda k: (k.T[:, :, None, None],),
    ),
    core.copy(f'{flax}.bias', f'{torch}.bias'),
  ]


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model)
  side = check_patch_size(image_size, model.patch_size)
  constants = {}
  rules = [
    *core.conv2d('patch_embed', 'to_patch_embedding.0'),
    core.expand('pos_embed', 'pos_embedding', (0,)),
    core.expand('cls_token', 'cls_token', (0, 1)),
  ]
  for s, depth in enumerate(model.depths):
    if s:
      pool, theirs = f'pools.{s - 1}', f'layers.{2 * s - 1}'
      rules += core.conv2d(f'{pool}.depthwise', f'{theirs}.downsample.net.0')
      rules += pointwise_conv(f'{pool}.pointwise', f'{theirs}.downsample.net.1')
      rules += core.linear(f'{pool}.cls', f'{theirs}.cls_ff')
      side = pooled_side(side)
    mask = base_mask(side).numpy()
    constants[f'layers.{2 * s}.mask'] = mask
    for i in range(depth):
      rules += block_rules(
        model.mask.kind, f'stages.{s}.{i}', f'layers.{2 * s}.layers.{i}', mask, constants
      )
  rules += core.layer_norm('norm', 'mlp_head.0')
  rules += core.linear('head', 'mlp_head.1')
  return core.Mapping(tuple(rules), constants)
