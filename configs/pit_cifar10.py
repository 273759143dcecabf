"""Plain PiT on CIFAR-10 with the paper's recipe (93.68% published).

    python train.py --config=configs/pit_cifar10.py --workdir=runs/pit_cifar10
Other datasets by argument: --config=configs/pit_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet). Tiny-ImageNet's 64x64 images get patch 4, as in the reference, so the
stages keep their 16x16, 8x8 and 4x4 grids.

6,972,586 trainable parameters at 32x32 and 10 classes, as the reference code.
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str) -> ml_collections.ConfigDict:
  """PiT at 96/192/384 wide; it keeps its CLS token in every variant, as the reference."""
  return ml_collections.ConfigDict(
    dict(
      name='pit',
      patch_size=4 if dataset == common.TINY_IMAGENET else 2,
      dim=96,  # Doubled by each pooling.
      depths=(2, 6, 4),
      num_heads=(2, 4, 8),
      head_dim=48,
      mlp_ratio=2,
      dropout=0.0,
      emb_dropout=0.0,
      stochastic_depth=0.1,
      dtype=common.PAPER_DTYPE,
      attention=common.attention(),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = model('none', arg)
  return config
