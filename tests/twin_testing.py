"""PyTorch twins of the reference code with weights drawn so that every tensor matters."""

import torch

from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.torch_models import build_torch_model


def strong_twin(config, seed: int = 0) -> torch.nn.Module:
  """A twin with weights drawn so that every tensor moves the logits by O(1).

  Kernels ~ N(0, 1/fan_in), ELM matrices ~ N(0, 1), biases and norm shifts ~ N(0, 0.04),
  norm scales ~ N(1, 0.04); the GMM's sigma and alpha keep their own init.
  """
  torch.manual_seed(seed)
  info = dataset_info(config.dataset)
  twin = build_torch_model(
    config.model,
    num_classes=info['num_classes'],
    image_size=info['image_size'],
    channels=info['channels'],
  )
  with torch.no_grad():
    for name, value in twin.named_parameters():
      if name.endswith(('sigma', 'alpha', 'pos_embedding', 'cls_token')):
        continue
      if name.endswith('mask.mask'):
        value.normal_()
      elif value.ndim >= 2:
        value.normal_(0.0, value[0].numel() ** -0.5)
      else:
        value.normal_(1.0 if _is_norm_scale(twin, name) else 0.0, 0.2)
  return twin.eval()


def _is_norm_scale(twin: torch.nn.Module, name: str) -> bool:
  module, _, leaf = name.rpartition('.')
  return leaf == 'weight' and isinstance(twin.get_submodule(module), torch.nn.LayerNorm)
