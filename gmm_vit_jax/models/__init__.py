"""Backbones, built by name from a config's `model` section."""

import jax.numpy as jnp
import ml_collections
from flax import nnx

from gmm_vit_jax import platforms
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.models.cait import CaiT
from gmm_vit_jax.models.hatnet import HATNet
from gmm_vit_jax.models.pit import PiT
from gmm_vit_jax.models.swin import Swin
from gmm_vit_jax.models.t2t import T2T
from gmm_vit_jax.models.vit import ViT

BACKBONES = {
  'vit': ViT,
  'swin': Swin,
  'cait': CaiT,
  'pit': PiT,
  't2t': T2T,
  'hatnet': HATNet,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Accelerators run bfloat16 matrix units at many times their float32 rate; a CPU does not.
ACCELERATORS = ('gpu', 'tpu')


def compute_dtype(name: str) -> str:
  """`model.dtype` resolved: 'auto' is bfloat16 on a GPU or TPU and float32 on a CPU
  (the platform traced for, gmm_vit_jax/platforms.py).

  Parameters and optimizer state stay float32 whatever this is; it sets what layers
  compute in. Softmax, normalisation statistics and the loss run in float32.
  """
  check_choice('model.dtype', name, tuple(DTYPES) + ('auto',))
  if name == 'auto':
    return 'bfloat16' if platforms.backend() in ACCELERATORS else 'float32'
  return name


def build_model(
  model: ml_collections.ConfigDict,
  *,
  num_classes: int,
  image_size: int,
  channels: int,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """The backbone `model.name` with the config's fields as its keyword arguments.

  The dataset supplies num_classes, image_size and channels.
  """
  check_choice('model.name', model.name, tuple(BACKBONES))
  kwargs = {k: v for k, v in model.items() if k != 'name'}
  kwargs['dtype'] = DTYPES[compute_dtype(model.dtype)]
  try:
    return BACKBONES[model.name](
      num_classes=num_classes, image_size=image_size, channels=channels, rngs=rngs, **kwargs
    )
  except TypeError as e:
    raise ValueError(f'model config does not fit backbone {model.name!r}: {e}') from e


def build_from_config(config: ml_collections.ConfigDict, seed: int = 0) -> nnx.Module:
  """The model of an experiment config, sized for its dataset."""
  info = dataset_info(config.dataset)
  return build_model(
    config.model,
    num_classes=info['num_classes'],
    image_size=info['image_size'],
    channels=info['channels'],
    rngs=nnx.Rngs(seed),
  )
