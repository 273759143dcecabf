"""Tiny-ImageNet (200 classes, 64x64 RGB) from its manual download folder.

The folder is the unzipped tiny-imagenet-200.zip:
  wnids.txt                        the 200 class ids (WordNet ids), one a line
  train/<wnid>/images/*.JPEG       500 training images per class
  val/images/*.JPEG                10,000 validation images, all in one folder
  val/val_annotations.txt          '<file>\\t<wnid>\\t<box>' for each of them
The folder may be a storage URL (gs://BUCKET/tiny-imagenet-200). The validation
images are not sorted into class folders: their classes come from
val_annotations.txt. A val/ already sorted into val/<wnid>/ folders is read like
train/. Class k is the k-th id in sorted order, the order of the reference's
ImageFolder. The val split is the test set of the published table.
"""

import concurrent.futures

import numpy as np
from PIL import Image

from gmm_vit_jax import errors, storage

NUM_CLASSES = 200
IMAGE_SIZE = 64
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2770, 0.2691, 0.2821)
SPLITS = ('train', 'val')

HOW_TO_GET = (
  'Tiny-ImageNet is not downloaded automatically: fetch '
  'http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it, and point '
  'config.dataset.data_dir at the tiny-imagenet-200 folder (the one holding '
  'wnids.txt, train/ and val/).'
)


def _require(path: str) -> str:
  if not storage.exists(path):
    raise errors.DatasetUnavailableError(f'Tiny-ImageNet: {path} is missing. {HOW_TO_GET}')
  return path


def class_ids(data_dir: str) -> list[str]:
  """The sorted class ids of wnids.txt; label k is class_ids(...)[k]."""
  text = storage.read_text(_require(storage.join(data_dir, 'wnids.txt')))
  return sorted(line.strip() for line in text.splitlines() if line.strip())


def _class_folder_files(split_dir: str, wnids: list[str]) -> list[tuple[str, int]]:
  """(path, label) of every JPEG under <split_dir>/<wnid>/, class by class, sorted."""
  files = []
  for label, wnid in enumerate(wnids):
    class_dir = _require(storage.join(split_dir, wnid))
    for root, _, names in sorted(storage.walk(class_dir)):
      files += [
        (storage.join(root, n), label)
        for n in sorted(names)
        if n.lower().endswith(('.jpeg', '.jpg'))
      ]
  return files


def _annotated_files(val_dir: str, wnids: list[str]) -> list[tuple[str, int]]:
  """(path, label) of val/images/<file> for each line of val_annotations.txt."""
  label_of = {wnid: k for k, wnid in enumerate(wnids)}
  files = []
  with storage.open_file(storage.join(val_dir, 'val_annotations.txt')) as f:
    for line in f:
      if not line.strip():
        continue
      fields = line.split('\t')
      if len(fields) < 2:
        raise errors.DatasetError(
          f'Tiny-ImageNet: the line {line.strip()!r} of '
          'val_annotations.txt is not "<file>\\t<wnid>\\t<box>"; '
          'restore the file from tiny-imagenet-200.zip.'
        )
      name, wnid = fields[:2]
      if wnid not in label_of:
        raise errors.DatasetError(
          f'Tiny-ImageNet: val_annotations.txt gives {name} the class '
          f'{wnid!r}, which wnids.txt does not list.'
        )
      files.append((_require(storage.join(val_dir, 'images', name)), label_of[wnid]))
  return files


def _decode(path: str) -> np.ndarray:
  try:
    with storage.open_file(path, 'rb') as f, Image.open(f) as image:
      array = np.asarray(image.convert('RGB'))  # A few images are greyscale.
  except (OSError, Image.DecompressionBombError) as e:
    raise errors.DatasetError(
      f'Tiny-ImageNet: {path} cannot be read as an image ({e}); '
      'restore it from tiny-imagenet-200.zip or delete it.'
    ) from e
  if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise errors.DatasetError(
      f'Tiny-ImageNet: {path} is {array.shape[:2]}, not {IMAGE_SIZE}x{IMAGE_SIZE}.'
    )
  return array


def files(data_dir: str, split: str) -> list[tuple[str, int]]:
  """(path, label) of every image of `split` ('train' or 'val'), in a fixed order."""
  if split not in SPLITS:
    raise ValueError(f'Tiny-ImageNet split={split!r} is not supported; choose one of {SPLITS}.')
  wnids = class_ids(_require(data_dir))
  split_dir = _require(storage.join(data_dir, split))
  if split == 'val' and storage.exists(storage.join(split_dir, 'val_annotations.txt')):
    found = _annotated_files(split_dir, wnids)
  else:
    found = _class_folder_files(split_dir, wnids)
  if not found:
    raise errors.DatasetUnavailableError(
      f'Tiny-ImageNet: no images under {split_dir}. {HOW_TO_GET}'
    )
  return found


def load(data_dir: str, split: str, workers: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """One split as (N, 64, 64, 3) uint8 images and (N,) int32 labels in [0, 200).

  Args:
    data_dir: the tiny-imagenet-200 folder.
    split: 'train' or 'val' (the labelled splits).
    workers: threads decoding the JPEGs.
  """
  found = files(data_dir, split)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    images = list(pool.map(_decode, [path for path, _ in found]))
  return np.stack(images), np.array([label for _, label in found], np.int32)
