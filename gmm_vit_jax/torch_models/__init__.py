"""PyTorch twins of the reference backbones, whose state_dicts are the reference's.

They test the weight converter and time the PyTorch side; each is built from the
same `model` config section as its Flax backbone.
"""

import ml_collections
from torch import nn

from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.torch_models.cait import CaiT
from gmm_vit_jax.torch_models.pit import PiT
from gmm_vit_jax.torch_models.swin import Swin
from gmm_vit_jax.torch_models.t2t import T2T
from gmm_vit_jax.torch_models.vit import ViT

TORCH_BACKBONES = {
  'vit': ViT,
  'swin': Swin,
  'cait': CaiT,
  'pit': PiT,
  't2t': T2T,
}


def build_torch_model(
  model: ml_collections.ConfigDict, *, num_classes: int, image_size: int, channels: int
) -> nn.Module:
  """The twin of backbone `model.name`; a ValueError when the config has no reference twin."""
  check_choice('model.name', model.name, tuple(TORCH_BACKBONES))
  return TORCH_BACKBONES[model.name].from_config(
    model, num_classes=num_classes, image_size=image_size, channels=channels
  )
