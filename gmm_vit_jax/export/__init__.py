"""Inference bundles: parameters, config, preprocessing facts and a serialized forward pass.

A bundle is a directory:
  params.safetensors  the model's variables without optimizer state, under flat names
                      such as 'blocks.0.attention.query.kernel'
  config.json         the resolved config the model was built from
  preprocess.json     dataset, image_size, channels, num_classes, mean, std, class_names,
                      background ('dark', 'light' or None: the training images'), and
                      preprocessing, the name of how image files become model inputs
                      (gmm_vit_jax/data/images.py, which predict applies)
  forward.jax_export  a serialized `jax.export` (StableHLO) of
                      forward(params, images) -> logits, where images are uint8
                      (B, H, W, C) with a symbolic batch B, params a dict of the flat
                      names, logits float32 (B, num_classes); normalisation is inside.
  source.json         where the weights came from: workdir, step, eval_accuracy,
                      eval_loss (None for a step that was not evaluated)
The directory may be a storage URL (gs://BUCKET/...; gmm_vit_jax/storage.py).
`load` runs the serialized forward, so predicting needs none of the model code;
`Bundle.build_model` rebuilds the nnx model from the config and parameters.

`python -m gmm_vit_jax.export` (`__main__.py`) writes the bundle of a training run; with
--format=onnx also model.onnx (gmm_vit_jax/onnx_export.py). --out must be a new or empty
directory, or a bundle, which only --overwrite replaces; anything else is refused before
anything is written.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import load as load_safetensors, save as save_safetensors

from gmm_vit_jax import errors, storage
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.data.images import PREPROCESSING
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.models import build_model

PARAMS_FILE = 'params.safetensors'
CONFIG_FILE = 'config.json'
PREPROCESS_FILE = 'preprocess.json'
FORWARD_FILE = 'forward.jax_export'
SOURCE_FILE = 'source.json'
BUNDLE_FILES = (PARAMS_FILE, CONFIG_FILE, PREPROCESS_FILE, FORWARD_FILE, SOURCE_FILE)
# The serialized forward runs on any of these; lowering for them needs no accelerator.
PLATFORMS = ('cpu', 'cuda', 'tpu')
# Everything a model stores as an nnx Variable is saved; RNG streams are not weights.
SAVED = nnx.All(nnx.Variable, nnx.Not(nnx.RngState))


def _name(path: tuple) -> str:
  return '.'.join(str(p) for p in path)


def flat_variables(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's saved variables as {flat name: numpy array}."""
  return {
    _name(path): np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(model, SAVED))
  }


def check_names(what: str, given, expected) -> None:
  """A ValueError listing the names missing from `given` and those not `expected`."""
  missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
  if missing or unexpected:
    more = ' (and more)' * (len(missing) > 8 or len(unexpected) > 8)
    raise ConfigError(
      f'{what} do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}{more}.'
    )


def _state_from_flat(flat_state, values: dict) -> nnx.State:
  return nnx.from_flat_state(
    [(path, var.replace(jnp.asarray(values[_name(path)], var.dtype))) for path, var in flat_state]
  )


def set_flat_variables(model: nnx.Module, values: dict[str, np.ndarray]) -> None:
  """Loads {flat name: array} into the model; a ValueError on missing names or shapes."""
  flat_state = nnx.to_flat_state(nnx.state(model, SAVED))
  check_names('variables', values, [_name(path) for path, _ in flat_state])
  for path, var in flat_state:
    shape = np.shape(values[_name(path)])
    if shape != var.shape:
      raise ConfigError(
        f'variable {_name(path)!r} has shape {shape}, the model expects {var.shape}.'
      )
  nnx.update(model, _state_from_flat(flat_state, values))


def _preprocess_facts(config: ml_collections.ConfigDict) -> dict:
  info = dataset_info(config.dataset)
  names = info['class_names'] or [str(i) for i in range(info['num_classes'])]
  return dict(
    dataset=config.dataset.name,
    image_size=info['image_size'],
    channels=info['channels'],
    num_classes=info['num_classes'],
    mean=list(info['mean']),
    std=list(info['std']),
    class_names=list(names),
    background=info['background'],
    preprocessing=PREPROCESSING,
  )


def export_forward(model: nnx.Module, preprocess: dict, platforms=PLATFORMS) -> jax.export.Exported:
  """forward(params, uint8 images (B, H, W, C)) -> float32 logits, exported for `platforms`."""
  graphdef, variables, rest = nnx.split(model, SAVED, ...)
  flat_state = nnx.to_flat_state(variables)
  mean, std = tuple(preprocess['mean']), tuple(preprocess['std'])

  def forward(params, images):
    net = nnx.merge(graphdef, _state_from_flat(flat_state, params), rest)
    return net(normalize(images, mean, std), deterministic=True).astype(jnp.float32)

  params = {_name(path): jax.ShapeDtypeStruct(var.shape, var.dtype) for path, var in flat_state}
  (batch,) = jax.export.symbolic_shape('batch')
  size, channels = preprocess['image_size'], preprocess['channels']
  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.uint8)
  return jax.export.export(jax.jit(forward), platforms=platforms)(params, images)


def save_bundle(
  model: nnx.Module,
  config: ml_collections.ConfigDict,
  out_dir: str,
  platforms=PLATFORMS,
  source: dict | None = None,
) -> None:
  """Writes the inference bundle of `model`, built from `config`, to out_dir.

  source: where the weights came from (SOURCE_FILE), if known.
  """
  preprocess = _preprocess_facts(config)
  exported = export_forward(model, preprocess, platforms)
  storage.check_reachable(out_dir)
  storage.makedirs(out_dir)
  write = lambda name, data: storage.write_atomically(storage.join(out_dir, name), data)
  write(
    PARAMS_FILE,
    save_safetensors({k: np.ascontiguousarray(v) for k, v in flat_variables(model).items()}),
  )
  write(CONFIG_FILE, config.to_json(indent=2))
  write(PREPROCESS_FILE, json.dumps(preprocess, indent=2))
  write(FORWARD_FILE, bytes(exported.serialize()))
  if source is not None:
    write(SOURCE_FILE, json.dumps(source, indent=2))


class Bundle:
  """A loaded bundle: `predict` runs the serialized forward pass."""

  def __init__(self, directory: str):
    storage.check_reachable(directory)
    missing = [
      f
      for f in (CONFIG_FILE, PREPROCESS_FILE, FORWARD_FILE, PARAMS_FILE)
      if not storage.isfile(storage.join(directory, f))
    ]
    if missing:
      raise errors.UserError(
        f'{directory} is not an inference bundle (it lacks {", ".join(missing)}); write one '
        'with python -m gmm_vit_jax.export --workdir=RUN --out=DIR.'
      )
    read = lambda name: storage.read_bytes(storage.join(directory, name))
    self.config = ml_collections.ConfigDict(json.loads(read(CONFIG_FILE)))
    self.preprocess = json.loads(read(PREPROCESS_FILE))
    self.exported = jax.export.deserialize(bytearray(read(FORWARD_FILE)))
    self.params = load_safetensors(read(PARAMS_FILE))
    self.class_names = self.preprocess['class_names']
    self._forward = jax.jit(self.exported.call)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    size = self.preprocess['image_size']
    return size, size, self.preprocess['channels']

  def predict(self, images) -> np.ndarray:
    """uint8 (B, H, W, C) images -> float32 (B, num_classes) logits."""
    images = np.asarray(images)
    expected = f'uint8 images of shape (B, {", ".join(map(str, self.image_shape))})'
    if images.dtype != np.uint8:
      raise ValueError(
        f'predict takes {expected}; got dtype {images.dtype}. Pass raw '
        'pixel values 0..255; normalisation is part of the bundle.'
      )
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise ValueError(f'predict takes {expected}; got shape {images.shape}.')
    return np.asarray(self._forward(self.params, images))

  def build_model(self) -> nnx.Module:
    """The nnx model rebuilt from the config, with the bundle's parameters."""
    model = build_model(
      self.config.model,
      num_classes=self.preprocess['num_classes'],
      image_size=self.preprocess['image_size'],
      channels=self.preprocess['channels'],
      rngs=nnx.Rngs(0),
    )
    set_flat_variables(model, self.params)
    return model


def load(directory: str) -> Bundle:
  return Bundle(directory)


def check_out(out: str, overwrite: bool) -> None:
  """A UserError unless a bundle may be written to `out`: a path under directories only,
  and a new or empty directory, or one holding only a bundle's files when `overwrite`."""
  names = sorted(
    storage.names_in('--out', out, 'choose a directory that does not exist yet (it is created).')
  )
  foreign = [n for n in names if n not in BUNDLE_FILES]
  if foreign:
    more = f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''
    raise errors.UserError(
      f'--out {out} holds files that are not part of a bundle '
      f'({", ".join(foreign[:5])}{more}): choose an empty or new --out; '
      'nothing was written.'
    )
  if names and not overwrite:
    raise errors.UserError(
      f'--out {out} holds a bundle already: pass --overwrite to replace '
      'it, or choose an empty or new --out.'
    )
