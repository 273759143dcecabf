"""Plain ViT (CLS token) on CIFAR-10 with the paper's recipe.

    python train.py --config=configs/vit_cifar10.py --workdir=runs/vit_cifar10
Other datasets by argument: --config=configs/vit_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet with --config.dataset.data_dir=tiny-imagenet-200).
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str = 'cifar10') -> ml_collections.ConfigDict:
  """The small-dataset ViT; the masked variants drop CLS and pool the token mean."""
  return ml_collections.ConfigDict(
    dict(
      name='vit',
      patch_size=common.patch_size(dataset, 4),
      dim=192,
      depth=9,
      num_heads=12,
      head_dim=16,
      mlp_ratio=2,
      pool='cls' if mask_kind == 'none' else 'mean',
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
