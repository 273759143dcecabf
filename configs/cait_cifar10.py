"""Plain CaiT on CIFAR-10 with the paper's recipe.

    python train.py --config=configs/cait_cifar10.py --workdir=runs/cait_cifar10
Other datasets by argument: --config=configs/cait_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet, which doubles the patch size).
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str) -> ml_collections.ConfigDict:
  """CaiT for 32x32 inputs: 8x8 tokens, 24 patch layers and 2 class-attention layers.

  9.02M parameters, as the reference code builds it (its README's 5.1M does not match).
  """
  return ml_collections.ConfigDict(
    dict(
      name='cait',
      patch_size=common.patch_size(dataset, 4),
      dim=192,
      depth=24,
      class_depth=2,
      num_heads=4,
      head_dim=64,
      mlp_dim=384,
      dropout=0.0,
      emb_dropout=0.0,
      stochastic_depth=0.1,  # The same rate in every layer, as the reference.
      dtype=common.PAPER_DTYPE,
      attention=common.attention(),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = model('none', arg)
  return config
