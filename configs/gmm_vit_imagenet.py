"""GMM-ViT on ImageNet-1k at 224x224 (common.imagenet_recipe).

    python train.py --config=configs/gmm_vit_imagenet.py --workdir=runs/gmm_vit_imagenet \
        --config.dataset.data_dir=DIR
DIR holds tfds 'imagenet2012' prepared in the array_record format (docs/datasets.md, "Bigger
datasets"). The model is DeiT-Small's size (dim 384, depth 12, 6 heads of 64, MLP ratio 4,
16x16 patches: a 14x14 token grid) with the Gaussian mixture mask in every layer and the
token mean pooled (the masked ViTs carry no CLS token). The argument 'none' gives the plain
ViT (CLS token) of the same size.
Augmented as DeiT trains: the Inception crop (augment.inception_crop, crop_scale 0.08-1,
crop_ratio 3/4-4/3), flip, and RandAugment (augment.randaugment_ops=2,
randaugment_magnitude=9, randaugment_magnitude_std=0.5), set by common.imagenet_recipe.
"""

import ml_collections

from gmm_vit_jax import configs_common as common


def model(mask_kind: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      name='vit',
      patch_size=16,
      dim=384,
      depth=12,
      num_heads=6,
      head_dim=64,
      mlp_ratio=4,
      pool='cls' if mask_kind == 'none' else 'mean',
      dropout=0.0,
      emb_dropout=0.0,
      stochastic_depth=0.1,
      dtype='auto',  # bfloat16 on GPUs and TPUs, float32 on CPUs.
      attention=common.attention(qkv_bias=True),
      mask=common.mask(mask_kind),
    )
  )


def get_config(arg: str = 'gmm') -> ml_collections.ConfigDict:
  config = common.imagenet_recipe()
  config.model = model(arg)
  return config
