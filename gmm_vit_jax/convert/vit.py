"""ViT: `gmm_vit_jax.models.ViT` <-> the reference's models/vit.py state_dict.

The reference's fused to_qkv weight stacks the query, key and value projections;
the GMM's sigma and alpha carry two trailing unit axes there; its base mask is a
buffer stored at the top and in every GMM layer.
"""

import ml_collections
import numpy as np

from gmm_vit_jax.convert import core
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.vit import base_mask, check_reference_config


def mask_rules(
  kind: str, flax: str, torch: str, base: np.ndarray, constants: dict[str, np.ndarray]
) -> list[core.Rule]:
  """Rules for the mask of the attention layers `flax` and `torch`, kind 'none', 'gmm' or 'elm'.

  The GMM's sigma and alpha gain two unit axes; its base mask is added to `constants`.
  """
  if kind == 'gmm':
    constants[f'{torch}.mask.mask'] = base
    return [
      core.expand(f'{flax}.mask.{name}', f'{torch}.mask.{name}', (2, 3))
      for name in ('sigma', 'alpha')
    ]
  if kind == 'elm':
    return [core.copy(f'{flax}.mask.weight', f'{torch}.mask.mask')]
  return []


def block_rules(
  kind: str, ours: str, theirs: str, base: np.ndarray, constants: dict[str, np.ndarray]
) -> list[core.Rule]:
  """An `EncoderBlock` <-> the reference's [PreNorm(Attention), PreNorm(FeedForward)] pair."""
  attention, mlp = f'{theirs}.0.fn', f'{theirs}.1.fn'
  rules = core.layer_norm(f'{ours}.norm1', f'{theirs}.0.norm')
  rules.append(
    core.fused_linear(
      tuple(f'{ours}.attention.{name}.kernel' for name in ('query', 'score.key', 'value')),
      f'{attention}.to_qkv.weight',
    )
  )
  rules += core.linear(f'{ours}.attention.out', f'{attention}.to_out.0')
  rules += mask_rules(kind, f'{ours}.attention', attention, base, constants)
  rules += core.layer_norm(f'{ours}.norm2', f'{theirs}.1.norm')
  rules += core.linear(f'{ours}.mlp.fc1', f'{mlp}.net.0')
  rules += core.linear(f'{ours}.mlp.fc2', f'{mlp}.net.3')
  return rules


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model)
  side = check_patch_size(image_size, model.patch_size)
  mask = base_mask(side).numpy()
  constants = {'mask': mask}
  rules = [
    *core.linear('patch_embed', 'to_patch_embedding.1'),
    core.expand('pos_embed', 'pos_embedding', (0,)),
  ]
  if model.pool == 'cls':
    rules.append(core.expand('cls_token', 'cls_token', (0, 1)))
  for i in range(model.depth):
    rules += block_rules(model.mask.kind, f'blocks.{i}', f'transformer.layers.{i}', mask, constants)
  rules += core.layer_norm('norm', 'mlp_head.0')
  rules += core.linear('head', 'mlp_head.1')
  return core.Mapping(tuple(rules), constants)
