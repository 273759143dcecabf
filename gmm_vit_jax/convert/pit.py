"""PiT: `gmm_vit_jax.models.PiT` <-> the reference's models/pit.py state_dict.

Besides the ViT's fused qkv and unit-axis GMM parameters: torch convolutions are
(out, in, kh, kw) where nnx.Conv kernels are (kh, kw, in, out); the pooling's 1x1
convolution is a Linear here; every stage stores its grid's base mask.
"""

import ml_collections
import numpy as np

from gmm_vit_jax.convert import core
from gmm_vit_jax.models.pit import pooled_side
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.pit import check_reference_config
from gmm_vit_jax.torch_models.vit import base_mask


def conv2d(flax: str, torch: str) -> list[core.Rule]:
  """nnx.Conv kernel (kh, kw, in, out) <-> torch Conv2d weight (out, in, kh, kw), and bias."""
  return [core.Rule((f'{flax}.kernel',), (f'{torch}.weight',),
                    lambda w: (w.transpose(2, 3, 1, 0),), lambda k: (k.transpose(3, 2, 0, 1),)),
          core.copy(f'{flax}.bias', f'{torch}.bias')]


def pointwise_conv(flax: str, torch: str) -> list[core.Rule]:
  """nnx.Linear kernel (in, out) <-> torch 1x1 Conv2d weight (out, in, 1, 1), and bias."""
  return [core.Rule((f'{flax}.kernel',), (f'{torch}.weight',),
                    lambda w: (w[:, :, 0, 0].T,), lambda k: (k.T[:, :, None, None],)),
          core.copy(f'{flax}.bias', f'{torch}.bias')]


def mask_rules(kind: str, flax: str, torch: str, base: np.ndarray,
               constants: dict[str, np.ndarray]) -> list[core.Rule]:
  """Rules for the mask of attention layers `flax` and `torch`, kind 'none', 'gmm' or 'elm'.

  The GMM's sigma and alpha gain two unit axes; its base mask joins `constants`.
  """
  if kind == 'gmm':
    constants[f'{torch}.mask.mask'] = base
    return [core.expand(f'{flax}.mask.{name}', f'{torch}.mask.{name}', (2, 3))
            for name in ('sigma', 'alpha')]
  if kind == 'elm':
    return [core.copy(f'{flax}.mask.weight', f'{torch}.mask.mask')]
  return []


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model)
  side = check_patch_size(image_size, model.patch_size)
  constants = {}
  rules = [*conv2d('patch_embed', 'to_patch_embedding.0'),
           core.expand('pos_embed', 'pos_embedding', (0,)),
           core.expand('cls_token', 'cls_token', (0, 1))]
  for s, depth in enumerate(model.depths):
    if s:
      pool, theirs = f'pools.{s - 1}', f'layers.{2 * s - 1}'
      rules += conv2d(f'{pool}.depthwise', f'{theirs}.downsample.net.0')
      rules += pointwise_conv(f'{pool}.pointwise', f'{theirs}.downsample.net.1')
      rules += core.linear(f'{pool}.cls', f'{theirs}.cls_ff')
      side = pooled_side(side)
    mask = base_mask(side).numpy()
    constants[f'layers.{2 * s}.mask'] = mask
    for i in range(depth):
      ours, theirs = f'stages.{s}.{i}', f'layers.{2 * s}.layers.{i}'
      attention, mlp = f'{theirs}.0.fn', f'{theirs}.1.fn'
      rules += core.layer_norm(f'{ours}.norm1', f'{theirs}.0.norm')
      rules.append(core.fused_linear(
          tuple(f'{ours}.attention.{name}.kernel' for name in ('query', 'score.key', 'value')),
          f'{attention}.to_qkv.weight'))
      rules += core.linear(f'{ours}.attention.out', f'{attention}.to_out.0')
      rules += mask_rules(model.mask.kind, f'{ours}.attention', attention, mask, constants)
      rules += core.layer_norm(f'{ours}.norm2', f'{theirs}.1.norm')
      rules += core.linear(f'{ours}.mlp.fc1', f'{mlp}.net.0')
      rules += core.linear(f'{ours}.mlp.fc2', f'{mlp}.net.3')
  rules += core.layer_norm('norm', 'mlp_head.0')
  rules += core.linear('head', 'mlp_head.1')
  return core.Mapping(tuple(rules), constants)
