"""Plain Swin on CIFAR-10 with the paper's recipe.

    python train.py --config=configs/swin_cifar10.py --workdir=runs/swin_cifar10
Other datasets by argument: --config=configs/swin_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet, which doubles the patch size).
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str) -> ml_collections.ConfigDict:
  """Swin for 32x32 inputs: 16x16 tokens, three stages, 4x4 windows."""
  return ml_collections.ConfigDict(
    dict(
      name='swin',
      patch_size=common.patch_size(dataset, 2),
      embed_dim=96,
      depths=(2, 6, 4),
      num_heads=(3, 6, 12),
      window_size=4,
      mlp_ratio=2,
      dropout=0.0,
      stochastic_depth=0.1,  # Linear from 0 at the first block to this at the last.
      dtype=common.PAPER_DTYPE,
      attention=common.attention(qkv_bias=True),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = model('none', arg)
  return config
