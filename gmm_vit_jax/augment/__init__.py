"""Training-time augmentation, run on the device inside the jitted train step.

Entry point: `augment_batch`, uint8 images in, normalised float images and
(possibly mixed) one-hot targets out. The order: Inception crop, horizontal flip,
padded random crop, AutoAugment, RandAugment, normalisation, random erasing, then
CutMix or Mixup over the batch (the reference recipe uses flip, padded crop and
AutoAugment; the ImageNet recipe of DeiT the Inception crop, flip and RandAugment).
Every per-example op draws independently for each example, from the one key it is given.

Fields of `config` (the config's `augment` section); a field that is absent turns
its step off:
  inception_crop: bool, a random box resized back to the image's size.
  crop_scale: (min, max) fraction of the image's area the box covers.
  crop_ratio: (min, max) width / height of the box.
  flip: bool.
  crop_padding: int, zero padding before the random crop (0 for none).
  autoaugment: 'none', 'cifar10', 'svhn' or 'imagenet' (the policy).
  randaugment_ops: ops RandAugment applies to each example (0 for none).
  randaugment_magnitude: their level, 0-10.
  randaugment_magnitude_std: standard deviation of the Gaussian noise on the level.
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
