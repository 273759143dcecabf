"""Training-time augmentation, run on the device inside the jitted train step.

Entry point: `augment_batch`, uint8 images in, normalised float images and
(possibly mixed) one-hot targets out. The reference recipe's order: horizontal
flip, padded random crop, AutoAugment, normalisation, random erasing, then CutMix
or Mixup over the batch. Every per-example op draws independently for each example,
from the one key it is given.

Fields of `config` (the config's `augment` section); a field that is absent turns
its step off:
  flip: bool.
  crop_padding: int, zero padding before the random crop (0 for none).
  autoaugment: 'none', 'cifar10', 'svhn' or 'imagenet' (the policy).
  erasing_prob: probability of erasing a rectangle of an example (0 for none).
  erasing_area: (min, max) fraction of the image the rectangle covers.
  erasing_min_aspect: smallest height / width ratio; the largest is its inverse.
  mix_prob: probability that a batch is mixed (0 for none).
  cutmix_prob: probability that a mixed batch uses CutMix rather than Mixup.
  mixup_alpha, cutmix_beta: parameters of the Beta distributions of the ratios.
"""

from gmm_vit_jax.augment.pipeline import augment_batch
from gmm_vit_jax.augment.visualize import augmentation_grid

__all__ = ['augment_batch', 'augmentation_grid']
