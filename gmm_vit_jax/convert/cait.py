"""CaiT: `gmm_vit_jax.models.CaiT` <-> the reference's models/cait.py state_dict.

The reference's fused to_kv weight stacks the key and value projections; its
LayerScales, position embedding and CLS token carry leading unit axes; its
talking-heads matrices are used as they are; the GMM's base mask is a buffer
stored at the top and in every GMM layer.
"""

import ml_collections
import numpy as np

from gmm_vit_jax.convert import core
from gmm_vit_jax.convert.vit import mask_rules
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.torch_models.cait import check_reference_config
from gmm_vit_jax.torch_models.vit import base_mask


def _layer(
  ours: str, theirs: str, mask_kind: str, mask: np.ndarray, constants: dict[str, np.ndarray]
) -> list[core.Rule]:
  """One LayerScale block: `ours` a Flax layer, `theirs` a reference transformer layer."""
  attention, mlp = f'{theirs}.0.fn.fn', f'{theirs}.1.fn.fn'
  return [
    core.expand(f'{ours}.attention_scale', f'{theirs}.0.scale', (0, 1)),
    *core.layer_norm(f'{ours}.norm1', f'{theirs}.0.fn.norm'),
    *core.linear(f'{ours}.attention.query', f'{attention}.to_q', bias=False),
    core.fused_linear(
      (f'{ours}.attention.score.key.kernel', f'{ours}.attention.value.kernel'),
      f'{attention}.to_kv.weight',
    ),
    core.copy(f'{ours}.attention.pre_softmax.kernel', f'{attention}.mix_heads_pre_attn'),
    core.copy(f'{ours}.attention.post_softmax.kernel', f'{attention}.mix_heads_post_attn'),
    *core.linear(f'{ours}.attention.out', f'{attention}.to_out.0'),
    *mask_rules(mask_kind, f'{ours}.attention', attention, mask, constants),
    core.expand(f'{ours}.mlp_scale', f'{theirs}.1.scale', (0, 1)),
    *core.layer_norm(f'{ours}.norm2', f'{theirs}.1.fn.norm'),
    *core.linear(f'{ours}.mlp.fc1', f'{mlp}.net.0'),
    *core.linear(f'{ours}.mlp.fc2', f'{mlp}.net.3'),
  ]


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model)
  mask = base_mask(check_patch_size(image_size, model.patch_size)).numpy()
  constants = {'mask': mask}
  rules = [
    *core.linear('patch_embed', 'to_patch_embedding.1'),
    core.expand('pos_embed', 'pos_embedding', (0,)),
    core.expand('cls_token', 'cls_token', (0, 1)),
  ]
  for i in range(model.depth):
    rules += _layer(
      f'patch_layers.{i}', f'patch_transformer.layers.{i}', model.mask.kind, mask, constants
    )
  for i in range(model.class_depth):
    rules += _layer(f'class_layers.{i}', f'cls_transformer.layers.{i}', 'none', mask, constants)
  rules += core.layer_norm('norm', 'mlp_head.0')
  rules += core.linear('head', 'mlp_head.1')
  return core.Mapping(tuple(rules), constants)
