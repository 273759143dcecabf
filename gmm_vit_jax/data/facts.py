"""The facts of datasets that are read from their data: image folders and tfds:NAME.

Class names come from the folders or the builder's label feature; the image size and
channels from dataset.image_size and dataset.channels, or the tfds images' own fixed shape
(image folders: 3 channels when None); mean, std (per channel, pixels in [0, 1]) and
background from up to STATS_SAMPLE training images, evenly spaced over the split (the
first ones for tfds), after preprocessing. Read once per process.
"""

import concurrent.futures
import functools

import ml_collections
import numpy as np

from gmm_vit_jax import errors
from gmm_vit_jax.data import image_folder, images, tfds_named
from gmm_vit_jax.data.info import IMAGE_FOLDER

STATS_SAMPLE = 1000
# A background (the images' outermost ring of pixels) darker than DARK or lighter than
# LIGHT on average is 'dark' or 'light'; predict suggests --invert against it.
DARK, LIGHT = 0.2, 0.8
READ_THREADS = 8


def validation_split(dataset: ml_collections.ConfigDict) -> str | None:
  """The labelled validation split the data holds: an image folder's validation/ or val/;
  None for tfds:NAME, where dataset.validation_split may name one."""
  if dataset.name == IMAGE_FOLDER:
    return image_folder.validation_folder(dataset.data_dir)
  return None


def read_files(paths, size: int, channels: int) -> np.ndarray:
  """uint8 (N, size, size, channels) of image files, decoded in threads."""
  with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
    decoded = list(pool.map(lambda p: images.read_image(p, size, channels), paths))
  return np.stack(decoded).reshape(-1, size, size, channels)


def _statistics(sample: np.ndarray) -> dict:
  """mean, std and background of uint8 (N, S, S, C) images."""
  pixels = sample.astype(np.float64) / 255
  border = images.border_brightness(sample)
  background = 'dark' if border < DARK else 'light' if border > LIGHT else None
  return dict(
    mean=tuple(round(float(m), 4) for m in pixels.mean(axis=(0, 1, 2))),
    std=tuple(round(max(float(s), 1e-3), 4) for s in pixels.std(axis=(0, 1, 2))),
    background=background,
  )


def _size(dataset: ml_collections.ConfigDict, own: int | None) -> int:
  size = dataset.get('image_size') or own
  if not size:
    raise errors.ConfigError(
      f'dataset.name={dataset.name!r} has images of many sizes: set '
      '--config.dataset.image_size=S (they are resized to S x S).'
    )
  return size


def read(dataset: ml_collections.ConfigDict) -> dict:
  """The DATASET_INFO-style facts of an image folder or tfds:NAME dataset section."""
  return _read(
    dataset.name,
    dataset.get('data_dir'),
    dataset.get('image_size'),
    dataset.get('channels'),
    dataset.get('validation_split'),
    dataset.get('download', False),
  )


@functools.lru_cache(maxsize=8)
def _read(name, data_dir, image_size, channels, validation, download) -> dict:
  dataset = ml_collections.ConfigDict(
    dict(name=name, data_dir=data_dir, image_size=image_size, channels=channels)
  )
  if name == IMAGE_FOLDER:
    folder = image_folder.scan(data_dir, validation or validation_split(dataset))
    size, channels = _size(dataset, None), channels or 3
    train = [path for path, _ in folder.files['train']]
    rows = np.unique(np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).round())
    sample = read_files([train[int(r)] for r in rows], size, channels)
    class_names = folder.class_names
  else:
    found = tfds_named.features(tfds_named.tfds_name(name), data_dir)
    height, width, own_channels = found.shape
    size = _size(dataset, height if height == width else None)
    channels = channels or own_channels or 3
    sample, _ = tfds_named.load(
      tfds_named.tfds_name(name),
      'train',
      data_dir=data_dir,
      download=download,
      size=size,
      channels=channels,
      limit=STATS_SAMPLE,
    )
    class_names = found.class_names
  return dict(
    image_size=size,
    channels=channels,
    num_classes=len(class_names),
    class_names=class_names,
    **_statistics(sample),
  )
