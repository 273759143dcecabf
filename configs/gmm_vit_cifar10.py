"""GMM-ViT on CIFAR-10 with the paper's recipe (95.06% published).

    python train.py --config=configs/gmm_vit_cifar10.py --workdir=runs/gmm_vit_cifar10
Other datasets by argument: --config=configs/gmm_vit_cifar10.py:cifar100 (or svhn_cropped).
"""

import ml_collections

from configs import vit_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = vit_cifar10.model('gmm', arg)
  return config
