"""GMM-Swin on CIFAR-10 with the paper's recipe: the mask on each window's 4x4 grid.

    python train.py --config=configs/gmm_swin_cifar10.py --workdir=runs/gmm_swin_cifar10
Other datasets by argument: --config=configs/gmm_swin_cifar10.py:cifar100 (or
svhn_cropped, tiny_imagenet). The ELM ablation: --config.model.mask.kind=elm.
"""

import ml_collections

from configs import swin_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = swin_cifar10.model('gmm', arg)
  return config
