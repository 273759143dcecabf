"""HAT-Net on ImageNet-1k at 224x224 (common.imagenet_recipe), in the HAT-Net paper's sizes.

    python train.py --config=configs/hatnet_imagenet.py:tiny --workdir=runs/hatnet_tiny \
        --config.dataset.data_dir=DIR
The argument is the size, 'tiny', 'small', 'medium' or 'large', optionally with ',gmm' for
the Gaussian mixture mask in the windowed attention (e.g. 'small,gmm'). All four keep
HAT-Net-Tiny's expansions 8/8/4/4, windows 8/7/7/1 and pooling ratios 8/4/2/1; the paper
reports 12.7M, 25.7M, 42.9M and 63.1M parameters at 2.0, 4.3, 8.3 and 11.5 GFLOPs.
Augmented as DeiT trains: the Inception crop (augment.inception_crop, crop_scale 0.08-1,
crop_ratio 3/4-4/3), flip, and RandAugment (augment.randaugment_ops=2,
randaugment_magnitude=9, randaugment_magnitude_std=0.5), set by common.imagenet_recipe.
"""

import ml_collections

from configs import hatnet_cifar10
from gmm_vit_jax import configs_common as common

# dims, head_dim, depths, kernel_sizes of each size.
SIZES = {
  'tiny': ((48, 96, 240, 384), 48, (2, 2, 6, 3), (3, 3, 3, 3)),
  'small': ((64, 128, 320, 512), 64, (2, 3, 8, 3), (3, 3, 3, 3)),
  'medium': ((64, 128, 320, 512), 64, (3, 6, 18, 3), (5, 3, 5, 3)),
  'large': ((64, 128, 320, 640), 64, (3, 8, 27, 3), (3, 3, 3, 3)),
}


def model(size: str, mask_kind: str) -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ValueError(f'HAT-Net size {size!r} is not supported; choose one of {tuple(SIZES)}.')
  config = hatnet_cifar10.imagenet_tiny(mask_kind)
  dims, head_dim, depths, kernel_sizes = SIZES[size]
  config.update(dict(dims=dims, head_dim=head_dim, depths=depths, kernel_sizes=kernel_sizes))
  return config


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  size, _, mask_kind = arg.partition(',')
  config = common.imagenet_recipe()
  config.model = model(size, mask_kind or 'none')
  return config
