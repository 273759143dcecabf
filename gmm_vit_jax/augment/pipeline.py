"""`augment_batch`: the whole training-time augmentation of one batch."""

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from gmm_vit_jax.augment.autoaugment import AUTOAUGMENT_POLICIES, autoaugment
from gmm_vit_jax.augment.basic import normalize, random_crop, random_flip
from gmm_vit_jax.augment.erasing import random_erasing
from gmm_vit_jax.augment.inception_crop import inception_crop
from gmm_vit_jax.augment.mix import mix_batch
from gmm_vit_jax.augment.randaugment import MAX_LEVEL, randaugment
from gmm_vit_jax.errors import ConfigError, check_choice


def _check_range(field: str, value, low: float, high: float) -> None:
  lo, hi = value
  if not low < lo <= hi <= high:
    raise ConfigError(f'augment.{field}={tuple(value)} must satisfy {low} < min <= max <= {high}.')


def _check(config: ml_collections.ConfigDict) -> None:
  check_choice('augment.autoaugment', config.get('autoaugment', 'none'), AUTOAUGMENT_POLICIES)
  if config.get('inception_crop', False):
    _check_range('crop_scale', config.crop_scale, 0.0, 1.0)
    _check_range('crop_ratio', config.crop_ratio, 0.0, float('inf'))
  if config.get('randaugment_ops', 0) > 0:
    if not 0 <= config.randaugment_magnitude <= MAX_LEVEL:
      raise ConfigError(
        f'augment.randaugment_magnitude={config.randaugment_magnitude} must be '
        f'in [0, {MAX_LEVEL:g}].'
      )
    if not config.randaugment_magnitude_std >= 0:
      raise ConfigError(
        f'augment.randaugment_magnitude_std={config.randaugment_magnitude_std} must be >= 0.'
      )
  if config.get('erasing_prob', 0.0) > 0:
    lo, hi = config.erasing_area
    if not 0 < lo <= hi < 1:
      raise ConfigError(
        f'augment.erasing_area={tuple(config.erasing_area)} must satisfy 0 < min <= max < 1.'
      )
    if not 0 < config.erasing_min_aspect <= 1:
      raise ConfigError(
        f'augment.erasing_min_aspect={config.erasing_min_aspect} must be in (0, 1].'
      )
  if config.get('mix_prob', 0.0) > 0:
    for field in ('mixup_alpha', 'cutmix_beta'):
      if not config[field] > 0:
        raise ConfigError(f'augment.{field}={config[field]} must be positive.')


def augment_batch(
  images: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  config: ml_collections.ConfigDict,
  *,
  num_classes: int,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(B, H, W, C) uint8, (B,) int labels -> (B, H, W, C) float32, (B, num_classes) targets.

  mesh: the one the batch is split over; Mixup and CutMix pair images within each shard.
  """
  _check(config)
  flip_key, crop_key, auto_key, erase_key, mix_key = jax.random.split(key, 5)
  x = images
  if config.get('inception_crop', False):
    x = inception_crop(
      x,
      jax.random.fold_in(crop_key, 1),
      scale=tuple(config.crop_scale),
      ratio=tuple(config.crop_ratio),
    )
  if config.flip:
    x = random_flip(x, flip_key)
  if config.crop_padding:
    x = random_crop(x, crop_key, config.crop_padding)
  policy = config.get('autoaugment', 'none')
  if policy != 'none':
    x = autoaugment(x, auto_key, policy)
  if config.get('randaugment_ops', 0) > 0:
    fill = tuple(min(255, round(255 * m)) for m in mean)  # The mean colour, in 8 bits.
    x = randaugment(
      x,
      jax.random.fold_in(auto_key, 1),
      num_ops=config.randaugment_ops,
      magnitude=config.randaugment_magnitude,
      magnitude_std=config.randaugment_magnitude_std,
      fill=fill,
    )
  x = normalize(x, mean, std)
  if config.get('erasing_prob', 0.0) > 0:
    x = random_erasing(
      x,
      erase_key,
      prob=config.erasing_prob,
      area=tuple(config.erasing_area),
      min_aspect=config.erasing_min_aspect,
      value=mean,
    )
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if config.get('mix_prob', 0.0) > 0:
    x, targets = mix_batch(
      x,
      targets,
      mix_key,
      prob=config.mix_prob,
      cutmix_prob=config.cutmix_prob,
      mixup_alpha=config.mixup_alpha,
      cutmix_beta=config.cutmix_beta,
      mesh=mesh,
    )
  return x, targets
