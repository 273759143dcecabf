"""GMM-CaiT on CIFAR-10 with the paper's recipe: the mask in the patch layers only.

    python train.py --config=configs/gmm_cait_cifar10.py --workdir=runs/gmm_cait_cifar10
Other datasets by argument: --config=configs/gmm_cait_cifar10.py:cifar100 (or
svhn_cropped, tiny_imagenet). The ELM ablation: --config.model.mask.kind=elm.
"""

import ml_collections

from configs import cait_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = cait_cifar10.model('gmm', arg)
  return config
