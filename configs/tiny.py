"""Tiny versions of the experiment configs: the same code paths at toy sizes.

`shrink(config)` keeps a config's recipe, mask, attention and dataset and swaps in a
model a few thousand parameters large, a short run and small batches. The cross-platform
lowering test and `python -m gmm_vit_jax.reproduce --tiny` use it; head widths stay
multiples of 8, so a bfloat16 lowering for CUDA still meets the cuDNN kernel's rules.
"""

import ml_collections

# Per backbone, the model fields that shrink; the others stay the config's own.
MODELS = {
  'vit': dict(dim=16, depth=1, num_heads=2, head_dim=8),
  'cait': dict(dim=16, depth=1, class_depth=1, num_heads=2, head_dim=8, mlp_dim=32),
  'swin': dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2)),
  'pit': dict(dim=16, depths=(1, 1), num_heads=(2, 4), head_dim=8),
  't2t': dict(token_dim=8, embed_dim=16, depth=1, num_heads=2),
  'hatnet': dict(dims=(8, 16, 16, 16), head_dim=8, depths=(1, 1, 1, 1), expansions=(2, 2, 2, 2)),
}

# Patch sizes that give each backbone its usual token grids on 8x8 digits.
DIGITS_PATCHES = {'vit': 2, 'cait': 2, 'swin': 1, 'pit': 1}
# As the quick start: digits are not mirror-symmetric, and 8x8 images shift by 1 pixel.
DIGITS_AUGMENT = dict(flip=False, crop_padding=1)

# Ten passes over the 1,437 training digits: enough for the tiny models to learn.
RECIPE = dict(
  batch_size=32,
  eval_batch_size=40,
  epochs=10,
  passes_per_epoch=1,
  log_every_steps=50,
)
LEARNING_RATE = 3e-3


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with a tiny model and a short, small-batch run."""
  config = config.copy_and_resolve_references()
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f'model.name={name!r} has no tiny version; choose one of {tuple(MODELS)}.')
  config.model.update(MODELS[name])
  if config.dataset.name == 'digits':
    config.augment.update(DIGITS_AUGMENT)
    if name in DIGITS_PATCHES:
      config.model.patch_size = DIGITS_PATCHES[name]
  config.update(RECIPE)
  config.schedule.warmup_epochs = 0
  # A few thousand parameters take a larger step than the paper's 1e-3 to learn in ten passes.
  config.optimizer.learning_rate = LEARNING_RATE
  config.checkpoint.every_steps = 100
  return config
