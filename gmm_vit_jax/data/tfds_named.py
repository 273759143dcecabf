"""Any tfds dataset by name: dataset.name='tfds:NAME'.

The builder says which feature is the image (the supervised keys' input, else the one
Image feature) and which the label (a ClassLabel, whose names are the class names). Its
'train' split trains; 'test' tests, or 'validation' where the dataset has no 'test'.
dataset.validation_split may name one more labelled split to choose checkpoints on.
Images go through images.fit_image, as image folders' do.
"""

import dataclasses
import functools

import numpy as np

from gmm_vit_jax import errors
from gmm_vit_jax.data import sources
from gmm_vit_jax.data.images import fit_image
from gmm_vit_jax.data.info import TFDS_PREFIX


@dataclasses.dataclass(frozen=True)
class Features:
  """What a tfds dataset's examples hold: the image and label keys, the image shape
  ((H, W, C), None where it varies), the class names and the splits it has."""

  image: str
  label: str
  shape: tuple
  class_names: tuple[str, ...]
  splits: tuple[str, ...]


def tfds_name(name: str) -> str:
  """'tfds:NAME' -> 'NAME'."""
  return name[len(TFDS_PREFIX) :]


@functools.lru_cache(maxsize=8)
def features(name: str, data_dir: str | None) -> Features:
  """The Features of tfds dataset `name` (without the 'tfds:' prefix), from its builder."""
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.ConfigError(f"dataset.name='{TFDS_PREFIX}{name}': {e}".split('\n')[0]) from None
  info = builder.info
  found = info.features
  of_type = lambda kind: [k for k, v in found.items() if isinstance(v, kind)]
  keys = info.supervised_keys if isinstance(info.supervised_keys, tuple) else (None, None)
  image = (
    keys[0]
    if keys[0] in of_type(tfds.features.Image)
    else next(iter(of_type(tfds.features.Image)), None)
  )
  label = (
    keys[1]
    if keys[1] in of_type(tfds.features.ClassLabel)
    else next(iter(of_type(tfds.features.ClassLabel)), None)
  )
  if image is None or label is None:
    raise errors.ConfigError(
      f"dataset.name='{TFDS_PREFIX}{name}': the dataset needs an Image feature and a "
      f'ClassLabel feature to train a classifier; its features are {dict(found)}.'
    )
  return Features(
    image, label, tuple(found[image].shape), tuple(found[label].names), tuple(info.splits.keys())
  )


def split_name(features_: Features, split: str, validation_split: str | None) -> str:
  """The tfds split that plays `split` ('train', 'test' or 'validation')."""
  if split == 'validation':
    return validation_split
  if split == 'test' and 'test' not in features_.splits and 'validation' in features_.splits:
    return 'validation'
  return split


def load(
  name: str,
  split: str,
  *,
  data_dir: str | None,
  download: bool,
  size: int,
  channels: int,
  validation_split: str | None = None,
  limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, size, size, channels), labels int32 (N,)) of a split, whole or its
  first `limit` examples, read through tf.data."""
  import tensorflow_datasets as tfds

  found = features(name, data_dir)

  def read(builder):
    dataset = builder.as_dataset(split=split_name(found, split, validation_split))
    if limit is not None:
      dataset = dataset.take(limit)
    return [
      (fit_image(example[found.image], size, channels), example[found.label])
      for example in tfds.as_numpy(dataset)
    ]

  examples = sources.read_tfds(name, data_dir, download, read)
  return (
    np.stack([image for image, _ in examples]).reshape(-1, size, size, channels),
    np.array([label for _, label in examples], np.int32),
  )
