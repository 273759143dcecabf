"""Layer-wise learning-rate decay: each parameter's factor, by a hand-made table."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training import optimizer

DECAY = 0.5

# Parameter-name prefix -> factor on the learning rate at layer_decay 0.5, worked by hand:
# a backbone of L blocks puts its embedding at layer 0 (0.5 ** (L + 1)), its blocks at 1..L
# in the order the tokens pass them, its final norm and head at L + 1 (factor 1).
VIT_DEPTH_2 = {  # L = 2.
  'patch_embed.': 0.125,
  'pos_embed': 0.125,
  'blocks.0.': 0.25,
  'blocks.1.': 0.5,
  'norm.': 1.0,
  'head.': 1.0,
}
SWIN_DEPTHS_2_1 = {  # L = 3: stage 0 holds blocks 1 and 2, stage 1 block 3.
  'patch_embed.': 0.0625,
  'patch_norm.': 0.0625,
  'pos_embed': 0.0625,
  'stages.0.blocks.0.': 0.125,
  'stages.0.blocks.1.': 0.25,
  'stages.0.downsample.': 0.25,  # Patch merging joins the last block of its stage.
  'stages.1.blocks.0.': 0.5,
  'norm.': 1.0,
  'head.': 1.0,
}


def _params(config_name: str, **model):
  config = tiny.shrink(importlib.import_module(f'configs.{config_name}').get_config())
  config.model.update(model)
  return nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: build_from_config(config, 0)), nnx.Param)
  )


def _named(tree) -> dict[str, float]:
  return {
    '.'.join(str(k.key) for k in path): value
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.mark.parametrize(
  'config_name, model, table',
  [
    ('gmm_vit_cifar10', dict(depth=2), VIT_DEPTH_2),
    ('gmm_swin_cifar10', dict(depths=(2, 1), num_heads=(2, 2)), SWIN_DEPTHS_2_1),
  ],
)
def test_factor_of_every_parameter(config_name, model, table):
  scales = _named(optimizer.layer_scales(_params(config_name, **model), DECAY))
  for name, scale in scales.items():
    matches = [prefix for prefix in table if name.startswith(prefix)]
    assert len(matches) == 1, f'{name} matches {matches} in the table'
    assert scale == table[matches[0]], name
  assert all(any(n.startswith(prefix) for n in scales) for prefix in table)


@pytest.mark.parametrize(
  'config_name, blocks',
  [
    ('gmm_cait_cifar10', 2),  # One patch layer, then one class layer.
    ('gmm_pit_cifar10', 2),
    ('gmm_t2t_cifar10', 1),
    ('gmm_hatnet_cifar10', 4),
    ('gmm_swin_cifar10', 2),
    ('gmm_vit_cifar10', 1),
  ],
)
def test_every_backbone_numbers_its_blocks(config_name, blocks):
  ids, num_blocks = optimizer.layer_ids(_params(config_name))
  named = _named(ids)
  assert num_blocks == blocks
  assert named['head.kernel'] == blocks + 1
  assert sorted(set(named.values())) == list(range(blocks + 2))


def test_cait_class_layers_come_after_the_patch_layers():
  named = _named(optimizer.layer_ids(_params('gmm_cait_cifar10'))[0])
  assert named['cls_token'] == 0 and named['patch_embed.kernel'] == 0
  assert named['patch_layers.0.mlp.fc1.kernel'] == 1
  assert named['class_layers.0.mlp.fc1.kernel'] == 2


def test_an_unplaced_parameter_is_refused():
  with pytest.raises(ValueError, match='extra.kernel belongs to no known layer'):
    optimizer.layer_ids({'head': {'kernel': 0}, 'extra': {'kernel': 0}})


def test_optimizer_scales_each_update_by_its_layer():
  from configs import quickstart

  config = quickstart.get_config()
  config.schedule.warmup_epochs = 0
  params = {
    'pos_embed': jnp.ones(3),
    'blocks': {0: {'w': jnp.ones(3)}},
    'head': {'kernel': jnp.ones(3)},
  }
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)

  def update(layer_decay):
    config.optimizer.layer_decay = layer_decay
    tx = optimizer.make_optimizer(config, steps_per_epoch=10)
    return _named(tx.update(grads, tx.init(params), params)[0])

  full, decayed = update(1.0), update(DECAY)
  for name, factor in [('pos_embed', 0.25), ('blocks.0.w', 0.5), ('head.kernel', 1.0)]:
    np.testing.assert_allclose(decayed[name], factor * full[name], rtol=1e-6)
  assert np.all(np.asarray(full['head.kernel']) != 0)
  config.optimizer.layer_decay = 0.0
  with pytest.raises(ValueError, match='layer_decay'):
    optimizer.make_optimizer(config, steps_per_epoch=10)
