"""Every backbone at the quick start's size and recipe, for the digits table.

`shrink(config)` keeps a config's mask, attention and dataset, and swaps in a model of
the quick start's size (configs/quickstart.py: 4 layers, 64 wide, heads 16 wide; the
hierarchical backbones 32 then 64 wide over two stages, 2 + 2 layers) and the quick
start's 60 passes over the 1,437 training digits: big enough to learn them (its GMM-ViT
reaches 99%), so the table compares backbones, not toy models.

    python -m gmm_vit_jax.reproduce --workdir=runs/paper_digits --datasets=digits \
        --shrink=quickstart_size --seeds=5
"""

import ml_collections

from configs import quickstart

MODELS = {
  'vit': dict(dim=64, depth=4, num_heads=4, head_dim=16),
  'cait': dict(dim=64, depth=4, class_depth=1, num_heads=4, head_dim=16, mlp_dim=128),
  'swin': dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
  'pit': dict(dim=32, depths=(2, 2), num_heads=(2, 4), head_dim=16),
  't2t': dict(token_dim=32, embed_dim=64, depth=4, num_heads=4),
}
# Patch sizes that give each backbone its usual token grids on 8x8 digits (T2T unfolds
# 8x8 to 4x4 and then 2x2).
DIGITS_PATCHES = {'vit': 2, 'cait': 2, 'swin': 1, 'pit': 1}


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with a model and run of the quick start's size."""
  config = config.copy_and_resolve_references()
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'model.name={name!r} has no quick-start size; choose one of {tuple(MODELS)}.')
  config.model.update(MODELS[name])
  start = quickstart.get_config(config.dataset.name)
  if config.dataset.name == 'digits':
    config.augment.update(start.augment)
    if name in DIGITS_PATCHES:
      config.model.patch_size = DIGITS_PATCHES[name]
  for field in (
    'batch_size',
    'eval_batch_size',
    'epochs',
    'passes_per_epoch',
    'label_smoothing',
    'log_every_steps',
    'eval_every_epochs',
    'progress_every_s',
    'cpu_keep_step_memory',
  ):
    config[field] = start[field]
  config.schedule.update(start.schedule)
  config.optimizer.update(start.optimizer)
  config.checkpoint.update(start.checkpoint)
  return config
