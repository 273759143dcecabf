"""GMM-HAT-Net on CIFAR-10 with the paper's recipe.

    python train.py --config=configs/gmm_hatnet_cifar10.py --workdir=runs/gmm_hatnet_cifar10
Other datasets by argument: --config=configs/gmm_hatnet_cifar10.py:cifar100 (or
svhn_cropped, tiny_imagenet). The mask acts in the windowed self-attention of every
block (4x4 windows, 2x2 in the third stage; the 2x2 map in the last); the pooled
attention stays plain.
The model is that of configs/hatnet_cifar10.py: 12,269,602 trainable parameters.
"""

import ml_collections

from configs import hatnet_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = hatnet_cifar10.model('gmm', arg)
  return config
