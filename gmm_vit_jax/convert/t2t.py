"""T2T-ViT: `gmm_vit_jax.models.T2T` <-> the reference's models/t2t.py state_dict.

The reference's fused qkv weight splits into query, key and value; GMM sigma and
alpha carry two unit axes there. Its fixed tensors (sinusoidal pos_embed, each grid's
base mask) are constants here; its unused cls_token and tokens_to_token.norm are
carried over as they are.
"""

import ml_collections
import numpy as np

from gmm_vit_jax.convert import core
from gmm_vit_jax.convert.vit import mask_rules
from gmm_vit_jax.models.t2t import sinusoid_position_embedding, unfolded_side
from gmm_vit_jax.torch_models.t2t import check_reference_config
from gmm_vit_jax.torch_models.vit import base_mask


def _layer_rules(
  kind: str, ours: str, theirs: str, base: np.ndarray, constants: dict[str, np.ndarray]
) -> list[core.Rule]:
  """A token transformer or encoder block: norm1, attn (qkv, proj, mask), norm2, mlp."""
  rules = core.layer_norm(f'{ours}.norm1', f'{theirs}.norm1')
  rules.append(
    core.fused_linear(
      tuple(f'{ours}.attention.{name}.kernel' for name in ('query', 'score.key', 'value')),
      f'{theirs}.attn.qkv.weight',
    )
  )
  rules += core.linear(f'{ours}.attention.out', f'{theirs}.attn.proj')
  rules += mask_rules(kind, f'{ours}.attention', f'{theirs}.attn', base, constants)
  rules += core.layer_norm(f'{ours}.norm2', f'{theirs}.norm2')
  rules += core.linear(f'{ours}.mlp.fc1', f'{theirs}.mlp.fc1')
  rules += core.linear(f'{ours}.mlp.fc2', f'{theirs}.mlp.fc2')
  return rules


def mapping(model: ml_collections.ConfigDict, *, image_size: int) -> core.Mapping:
  check_reference_config(model, image_size=image_size)
  kind = model.mask.kind
  constants = {}
  rules = []
  side = unfolded_side(image_size)
  for layer in range(model.num_token_layers):
    theirs = f'tokens_to_token.attention{layer + 1}'
    base = base_mask(side).numpy()
    constants[f'{theirs}.mask'] = base
    rules += _layer_rules(kind, f'tokens_to_token.layers.{layer}', theirs, base, constants)
    side = unfolded_side(side)
  rules += core.layer_norm('tokens_to_token.norm', 'tokens_to_token.norm')
  rules += core.linear('tokens_to_token.project', 'tokens_to_token.project')
  rules.append(core.expand('cls_token', 'cls_token', (0, 1)))
  constants['pos_embed'] = sinusoid_position_embedding(side * side, model.embed_dim)[None]
  base = base_mask(side).numpy()
  constants['mask'] = base
  for i in range(model.depth):
    rules += _layer_rules(kind, f'blocks.{i}', f'blocks.{i}', base, constants)
  rules += core.layer_norm('norm', 'norm')
  rules += core.linear('head', 'head')
  return core.Mapping(tuple(rules), constants)
