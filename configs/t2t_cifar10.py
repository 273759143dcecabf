"""Plain T2T-ViT on CIFAR-10 with the paper's recipe (95.32% published).

    python train.py --config=configs/t2t_cifar10.py --workdir=runs/t2t_cifar10
Other datasets by argument: --config=configs/t2t_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet). Tiny-ImageNet's 64x64 images get a second token transformer and unfold,
as in the reference, so the encoder keeps its 8x8 grid.

6,486,080 trainable parameters at 32x32 and 10 classes, as the reference code.
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str) -> ml_collections.ConfigDict:
  """T2T-ViT with a 256-wide, 12-deep encoder; mean pooling, no CLS, in every variant."""
  return ml_collections.ConfigDict(
    dict(
      name='t2t',
      num_token_layers=2 if dataset == common.TINY_IMAGENET else 1,
      token_dim=64,
      embed_dim=256,
      depth=12,
      num_heads=4,
      mlp_ratio=2,
      dropout=0.0,
      stochastic_depth=0.1,  # Rises linearly over the encoder.
      dtype=common.PAPER_DTYPE,
      attention=common.attention(),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = model('none', arg)
  return config
