"""Swin: `gmm_vit_jax.models.Swin` <-> the reference's models/swin.py state_dict.

Plain and GMM only (the reference's ELM Swin does not build). The reference's
fused qkv weight and bias stack the query, key and value projections; its patch
embedding is a Conv2d; the relative position index, the shift masks and the GMM's
base mask are buffers fixed by the config.
"""

import ml_collections
import numpy as np

from gmm_vit_jax.convert import core
from gmm_vit_jax.convert.vit import mask_rules
from gmm_vit_jax.models.swin import relative_position_index, shift_mask, stage_grids, stage_window
from gmm_vit_jax.torch_models.swin import check_reference_config
from gmm_vit_jax.torch_models.vit import base_mask

# The thirds of the reference's qkv, in order.
PROJECTIONS = ('query', 'score.key', 'value')


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model, image_size)
  mask = base_mask(model.window_size).numpy()
  constants = {'mask': mask}
  rules = [
    *core.conv2d('patch_embed', 'patch_embed.proj'),
    *core.layer_norm('patch_norm', 'patch_embed.norm'),
    core.expand('pos_embed', 'absolute_pos_embed', (0,)),
  ]
  grids = stage_grids(image_size, model.patch_size, len(model.depths))
  for s, (depth, side) in enumerate(zip(model.depths, grids)):
    window, shift = stage_window((side, side), model.window_size)
    index = relative_position_index(window).astype(np.int64)
    for j in range(depth):
      ours, theirs = f'stages.{s}.blocks.{j}', f'layers.{s}.blocks.{j}'
      mha, attn = f'{ours}.attention.mha', f'{theirs}.attn'
      rules += core.layer_norm(f'{ours}.norm1', f'{theirs}.norm1')
      rules.append(
        core.copy(
          f'{ours}.attention.relative_position_bias', f'{attn}.relative_position_bias_table'
        )
      )
      constants[f'{attn}.relative_position_index'] = index
      rules.append(
        core.fused_linear(tuple(f'{mha}.{p}.kernel' for p in PROJECTIONS), f'{attn}.qkv.weight')
      )
      if model.attention.qkv_bias:
        rules.append(
          core.fused_bias(tuple(f'{mha}.{p}.bias' for p in PROJECTIONS), f'{attn}.qkv.bias')
        )
      rules += core.linear(f'{mha}.out', f'{attn}.proj')
      rules += mask_rules(model.mask.kind, mha, attn, mask, constants)
      if shift and j % 2:
        constants[f'{theirs}.attn_mask'] = shift_mask(side, side, window, shift)
      rules += core.layer_norm(f'{ours}.norm2', f'{theirs}.norm2')
      rules += core.linear(f'{ours}.mlp.fc1', f'{theirs}.mlp.fc1')
      rules += core.linear(f'{ours}.mlp.fc2', f'{theirs}.mlp.fc2')
    if s < len(model.depths) - 1:
      rules += core.layer_norm(f'stages.{s}.downsample.norm', f'layers.{s}.downsample.norm')
      rules += core.linear(
        f'stages.{s}.downsample.reduction', f'layers.{s}.downsample.reduction', bias=False
      )
  rules += core.layer_norm('norm', 'norm')
  rules += core.linear('head', 'head')
  return core.Mapping(tuple(rules), constants)
