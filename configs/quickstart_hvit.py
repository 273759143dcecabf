"""GMM-HViT on the bundled digits: the quick start's GMM-ViT with mixture-of-Gaussian-keys
attention on half the heads (2 x 16 where it has 4 x 16) and the variance heuristic
keeping 70% of the patches in training.

    python train.py --config=configs/quickstart_hvit.py --workdir=runs/quickstart_hvit
"""

import ml_collections

from configs import quickstart
from gmm_vit_jax import configs_common as common


def get_config(arg: str = 'digits') -> ml_collections.ConfigDict:
  config = quickstart.get_config(arg)
  config.model.num_heads = 2
  config.model.attention = common.attention('mixture_of_keys')
  config.patch_selection = common.patch_selection('variance', keep=0.7)
  return config
