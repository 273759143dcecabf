"""GMM-PiT on CIFAR-10 with the paper's recipe (94.41% published).

    python train.py --config=configs/gmm_pit_cifar10.py --workdir=runs/gmm_pit_cifar10
Other datasets by argument: --config=configs/gmm_pit_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet).

6,973,186 trainable parameters at 32x32 and 10 classes, as the reference code.
"""

import ml_collections

from configs import pit_cifar10
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = pit_cifar10.model('gmm', arg)
  return config
