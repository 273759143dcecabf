"""Whole splits as uint8 arrays: tfds datasets, and scikit-learn's bundled digits offline.

CIFAR-size datasets fit in accelerator memory, so a split is read once into
(N, H, W, C) uint8 images and (N,) int32 labels and never streamed.
"""

import contextlib
import os
import shutil
import urllib.parse

import numpy as np

from gmm_vit_jax import errors
from gmm_vit_jax.data import tiny_imagenet
from gmm_vit_jax.data.info import dataset_info, digits_to_uint8
from gmm_vit_jax.errors import ConfigError

TFDS_SPLITS = {'train': 'train', 'test': 'test'}
# Datasets whose labelled held-out split has another tfds name.
TFDS_SPLIT_NAMES = {'imagenet2012': {'test': 'validation'}}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
READ_CHUNK = 10_000
PROBE_TIMEOUT_S = 10


def load_split(
  name: str, split: str, *, data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (N, H, W, C), labels int32 (N,)) of `split` ('train' or 'test').

  download: let tfds fetch and prepare a dataset that is not prepared yet.
  """
  dataset_info(name)
  if split not in TFDS_SPLITS:
    raise ValueError(f'split={split!r} is not supported; choose one of {tuple(TFDS_SPLITS)}.')
  if name == 'digits':
    return _digits(split)
  if name == 'tiny_imagenet':
    if data_dir is None:
      raise ConfigError(
        'dataset.data_dir must name the unzipped tiny-imagenet-200 folder '
        '(Tiny-ImageNet is not in the tfds catalogue).'
      )
    # Its labelled test set is the 'val' folder.
    return tiny_imagenet.load(data_dir, 'train' if split == 'train' else 'val')
  return _tfds(name, split, data_dir, download)


def tfds_split(name: str, split: str) -> str:
  """The tfds name of `split` ('train' or 'test') of dataset `name`."""
  return TFDS_SPLIT_NAMES.get(name, {}).get(split, TFDS_SPLITS[split])


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """A fixed stratified 80/20 split of the 1,797 sklearn digits, grey levels scaled to uint8."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = digits_to_uint8(digits.images)[..., None]
  labels = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
  )
  return (x_train, y_train) if split == 'train' else (x_test, y_test)


def _not_prepared(name: str, data_dir: str, why: str) -> errors.DatasetUnavailableError:
  return errors.DatasetUnavailableError(
    f'The tfds dataset {name!r} is not prepared in {data_dir} ({why}). On a machine with '
    f'internet access run `python -c "import tensorflow_datasets as tfds; '
    f'tfds.builder({name!r}).download_and_prepare()"` and copy ~/tensorflow_datasets/{name} '
    f'here, or pass --config.dataset.data_dir=DIR where DIR holds the prepared dataset.'
  )


def download_urls(builder) -> list[str]:
  """The URLs tfds would download to prepare `builder`'s dataset (from its checksums file)."""
  return sorted(builder.url_infos or ())


def unreachable(urls: list[str]) -> str | None:
  """Why the first of `urls` that cannot be reached fails, or None if all answer.

  One attempt each, no retries: tfds's own downloader retries with back-off for minutes
  before it gives up on a machine without network access.
  """
  import requests

  for url in urls:
    try:
      requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=True)
    except requests.RequestException as e:
      return f'{urllib.parse.urlsplit(url).netloc} cannot be reached: {type(e).__name__}'
  return None


@contextlib.contextmanager
def _removed_on_failure(*directories: str):
  """Removes what the block adds inside `directories` if it raises: no partial download
  or half-prepared dataset is left to confuse the next attempt."""
  before = {d: set(os.listdir(d)) if os.path.isdir(d) else None for d in directories}
  try:
    yield
  except BaseException:
    for directory, entries in before.items():
      if entries is None:
        shutil.rmtree(directory, ignore_errors=True)
      elif os.path.isdir(directory):
        for entry in set(os.listdir(directory)) - entries:
          path = os.path.join(directory, entry)
          shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    raise


def read_tfds(name: str, data_dir: str | None, download: bool, read):
  """read(builder) of tfds dataset `name`, prepared first when it is not and `download`
  allows; a DatasetUnavailableError saying how to prepare it otherwise."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  # TensorFlow only reads files here; the accelerator belongs to JAX.
  tf.config.set_visible_devices([], 'GPU')
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    return read(builder)
  except AssertionError:  # What tfds raises for a dataset that is not prepared.
    if not download:
      raise _not_prepared(name, builder.data_dir, 'dataset.download is off') from None
    why = unreachable(download_urls(builder))
    if why:
      raise _not_prepared(name, builder.data_dir, why) from None
    root = os.path.dirname(os.path.dirname(builder.data_dir))  # DATA_DIR/<name>/<version>
    try:
      with _removed_on_failure(root, os.path.join(root, name), os.path.join(root, 'downloads')):
        builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise _not_prepared(
        name, builder.data_dir, f'the download failed: {type(e).__name__}: {e}'
      ) from None
    return read(builder)


def _tfds(
  name: str, split: str, data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds

  def read(builder):
    return list(
      tfds.as_numpy(
        builder.as_dataset(split=tfds_split(name, split), as_supervised=True).batch(READ_CHUNK)
      )
    )

  images, labels = zip(*read_tfds(name, data_dir, download, read))
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
