"""GMM-T2T-ViT on CIFAR-10 with the paper's recipe (96.16% published).

    python train.py --config=configs/gmm_t2t_cifar10.py --workdir=runs/gmm_t2t_cifar10
Other datasets by argument: --config=configs/gmm_t2t_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet). The masks act in the token transformer (16x16 grid) and in every encoder
layer (8x8 grid).

6,486,570 trainable parameters at 32x32 and 10 classes, as the reference code.
"""

import ml_collections

from configs import t2t_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = t2t_cifar10.model('gmm', arg)
  return config
