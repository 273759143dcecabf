"""Weights between the reference PyTorch code and the Flax models.

    python -m gmm_vit_jax.convert torch-reference --config=configs/gmm_vit_cifar10.py \
        --state_dict=FILE.pth --out=DIR
    python -m gmm_vit_jax.convert to-torch --export=DIR --out=FILE.pth

The first writes an inference bundle (gmm_vit_jax.export) from a reference
state_dict, the second a state_dict the reference code loads from a bundle. A
backbone joins by adding its mapping to MAPPINGS: a function of its `model` config
and the image size that returns a `core.Mapping`.
"""

import io

import ml_collections
import numpy as np
import torch
from flax import nnx

from gmm_vit_jax import export, storage
from gmm_vit_jax.convert import cait, core, pit, swin, t2t, vit
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.models import build_model

MAPPINGS = {
  'vit': vit.mapping,
  'swin': swin.mapping,
  'cait': cait.mapping,
  'pit': pit.mapping,
  't2t': t2t.mapping,
}


def reference_mapping(config: ml_collections.ConfigDict) -> core.Mapping:
  check_choice('model.name', config.model.name, tuple(MAPPINGS))
  image_size = dataset_info(config.dataset)['image_size']
  return MAPPINGS[config.model.name](config.model, image_size=image_size)


def model_from_torch(
  state_dict: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> nnx.Module:
  """The Flax model of `config` carrying a reference state_dict's weights."""
  info = dataset_info(config.dataset)
  model = build_model(
    config.model,
    num_classes=info['num_classes'],
    image_size=info['image_size'],
    channels=info['channels'],
    rngs=nnx.Rngs(0),
  )
  shapes = {name: value.shape for name, value in export.flat_variables(model).items()}
  export.set_flat_variables(model, core.to_flax(reference_mapping(config), state_dict, shapes))
  return model


def torch_from_variables(
  variables: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
  """Flat Flax variables (export.flat_variables, or a bundle's params) -> reference state_dict."""
  return core.to_torch(reference_mapping(config), variables)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .pth state_dict, or a reference training checkpoint holding one, as float32 NumPy."""
  loaded = torch.load(io.BytesIO(storage.read_bytes(path)), map_location='cpu', weights_only=True)
  if 'model_state_dict' in loaded:
    loaded = loaded['model_state_dict']
  return {key: value.detach().float().numpy() for key, value in loaded.items()}


def write_torch_state_dict(state_dict: dict[str, np.ndarray], path: str) -> None:
  torch.save(
    {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state_dict.items()}, path
  )


def reference_to_bundle(
  config: ml_collections.ConfigDict, state_dict_path: str, out_dir: str
) -> None:
  """A reference .pth file -> an inference bundle of the model `config` describes."""
  model = model_from_torch(read_torch_state_dict(state_dict_path), config)
  export.save_bundle(model, config, out_dir)


def bundle_to_reference(bundle_dir: str, out_path: str) -> None:
  """An inference bundle -> a .pth state_dict that the reference code loads."""
  bundle = export.load(bundle_dir)
  write_torch_state_dict(torch_from_variables(bundle.params, bundle.config), out_path)
