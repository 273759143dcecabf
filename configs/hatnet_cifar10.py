"""Plain HAT-Net on CIFAR-10 with the paper's recipe.

    python train.py --config=configs/hatnet_cifar10.py --workdir=runs/hatnet_cifar10
Other datasets by argument: --config=configs/hatnet_cifar10.py:cifar100 (or svhn_cropped,
tiny_imagenet).

The CIFAR model is HAT-Net-Tiny's widths and depths (dims 48/96/240/384, head dim 48,
depths 2/2/6/3, expansions 8/8/4/4) on 32x32 inputs: the stem's first convolution has
stride 1, so the four stages run on 16x16, 8x8, 4x4 and 2x2 maps (ImageNet's stride-4
stem would leave 8x8). Windows are 4x4 (Swin's CIFAR window) in the first two stages
and 2x2 in the third, so that its 4x4 map holds 2x2 windows and its local attention
sees less than its global one, as HAT-Net-Tiny's 14x14 third stage holds 2x2 windows
of 7x7 (one 4x4 window would cover the map, and local and global attention would see
the same 16 tokens). The pooling ratios 4/2/1 bring every hierarchical stage's keys to
a 4x4 map, as HAT-Net-Tiny pools every stage to 7x7; the 2x2 last stage attends over
its whole map. Tiny-ImageNet's 64x64 images get the stride-4 stem, so the maps are the
same.

12,269,002 trainable parameters at 10 classes (12,269,602 with GMM). HAT-Net-Tiny at
224x224 and 1000 classes has 12,650,152, the published 12.7M; the reference code counts
12,655,912, 5,760 of them in a GroupNorm per block (attn.proj_norm) its forward pass
never uses, left out here.
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str, dataset: str) -> ml_collections.ConfigDict:
  """HAT-Net-Tiny adapted to 32x32 (64x64 for Tiny-ImageNet); see the module docstring."""
  config = imagenet_tiny(mask_kind)
  config.stem_strides = (2, 2) if dataset == common.TINY_IMAGENET else (1, 2)
  config.grid_sizes = (4, 4, 2, 1)
  config.ds_ratios = (4, 2, 1, 1)
  return config


def imagenet_tiny(mask_kind: str) -> ml_collections.ConfigDict:
  """HAT-Net-Tiny of the HAT-Net paper, for 224x224 ImageNet images."""
  return ml_collections.ConfigDict(
    dict(
      name='hatnet',
      stem_strides=(2, 2),
      dims=(48, 96, 240, 384),
      head_dim=48,
      depths=(2, 2, 6, 3),
      expansions=(8, 8, 4, 4),
      kernel_sizes=(3, 3, 3, 3),
      grid_sizes=(8, 7, 7, 1),
      ds_ratios=(8, 4, 2, 1),
      dropout=0.0,
      head_dropout=0.2,  # HAT-Net's classifier dropout.
      stochastic_depth=0.1,  # Rises linearly over all blocks.
      dtype=common.PAPER_DTYPE,
      attention=common.attention(qkv_bias=True),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'cifar10') -> ml_collections.ConfigDict:
  config = common.paper_recipe(arg)
  config.model = model('none', arg)
  return config
