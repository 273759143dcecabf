"""Random-access sources of single examples for the streaming pipeline: record i is
(uint8 (S, S, C) image at the dataset's image size S, int label), read and decoded on the
host (in grain's workers), never held whole in memory except the offline digits."""

import concurrent.futures

import ml_collections
import numpy as np

from gmm_vit_jax.data import image_folder, sources, tfds_named, tiny_imagenet
from gmm_vit_jax.data.images import fit_image, read_image
from gmm_vit_jax.data.info import IMAGE_FOLDER, dataset_info, reads_facts_from_data
from gmm_vit_jax.errors import ConfigError

READ_THREADS = 8


class ArrayRecords:
  """A split already in memory (the offline digits)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self._labels = images, labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return self.images[i], int(self._labels[i])

  def labels(self) -> np.ndarray:
    return self._labels


class TfdsRecords:
  """A prepared tfds dataset through tfds.data_source (ArrayRecord files, random access)."""

  def __init__(
    self,
    name: str,
    split: str,
    data_dir: str | None,
    size: int,
    channels: int,
    image_key: str = 'image',
    label_key: str = 'label',
  ):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.size, self.channels = size, channels
    self.image_key, self.label_key = image_key, label_key
    self._source = None

  def _open(self, decode: bool = True):
    import tensorflow_datasets as tfds

    decoders = None if decode else {self.image_key: tfds.decode.SkipDecoding()}
    try:
      return tfds.data_source(
        self.name, split=self.split, data_dir=self.data_dir, download=False, decoders=decoders
      )
    except Exception as e:
      raise RuntimeError(
        f'tfds.data_source({self.name!r}, split={self.split!r}) failed in '
        f'{self.data_dir}: {e}. The grain pipeline reads datasets prepared in '
        'the array_record file format (tfds build --file_format=array_record).'
      ) from e

  @property
  def source(self):
    if self._source is None:  # Opened in each worker, after pickling.
      self._source = self._open()
    return self._source

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    record = self.source[int(i)]
    return (
      fit_image(np.asarray(record[self.image_key]), self.size, self.channels),
      int(record[self.label_key]),
    )

  def labels(self) -> np.ndarray:
    undecoded = self._open(decode=False)
    return np.array([int(undecoded[i][self.label_key]) for i in range(len(undecoded))], np.int32)


class FolderRecords:
  """Image files with their labels, read by images.read_image (image folders,
  Tiny-ImageNet's folders)."""

  def __init__(self, found: list[tuple[str, int]], size: int, channels: int):
    self.paths = [path for path, _ in found]
    self._labels = np.array([label for _, label in found], np.int32)
    self.size, self.channels = size, channels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return read_image(self.paths[i], self.size, self.channels), int(self._labels[i])

  def labels(self) -> np.ndarray:
    return self._labels


# Datasets whose images come in many sizes: tfds cannot batch them whole, so even a
# resident split is read through the records, each image fitted to the dataset's size.
VARIABLE_SIZE = ('imagenet2012',)


def read_all(records) -> tuple[np.ndarray, np.ndarray]:
  """Every record as (N, S, S, C) uint8 images and (N,) int32 labels, read in threads."""
  with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
    examples = list(pool.map(records.__getitem__, range(len(records))))
  return (
    np.stack([image for image, _ in examples]),
    np.array([label for _, label in examples], np.int32),
  )


def splits(dataset: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The labelled splits the data gives: 'train', 'test', and 'validation' where
  dataset.validation_split names one (a validation hold-out of train is not among them)."""
  return ('train', 'test') + ('validation',) * bool(dataset.get('validation_split'))


def open_records(dataset: ml_collections.ConfigDict, split: str):
  """The records of `split` (one of `splits(dataset)`) of a config's dataset section."""
  if split not in splits(dataset):
    raise ValueError(f'split={split!r} is not supported; choose one of {splits(dataset)}.')
  name, data_dir = dataset.name, dataset.data_dir
  info = dataset_info(dataset)
  size, channels = info['image_size'], info['channels']
  if name == IMAGE_FOLDER:
    folder = image_folder.scan(data_dir, dataset.get('validation_split'))
    if tuple(info['class_names']) != folder.class_names:
      raise image_folder.ImageFolderError(
        f'{data_dir} holds the classes {list(folder.class_names)[:8]}, not the '
        f"{list(info['class_names'])[:8]} of dataset.class_names (the run's)."
      )
    return FolderRecords(list(folder.files[split]), size, channels)
  if reads_facts_from_data(name):
    tfds_name = tfds_named.tfds_name(name)
    found = tfds_named.features(tfds_name, data_dir)
    return TfdsRecords(
      tfds_name,
      tfds_named.split_name(found, split, dataset.get('validation_split')),
      data_dir,
      size,
      channels,
      found.image,
      found.label,
    )
  if name == 'digits':
    return ArrayRecords(*sources.load_split(name, split, data_dir=None, download=False))
  if name == 'tiny_imagenet':
    if data_dir is None:
      raise ConfigError('dataset.data_dir must name the unzipped tiny-imagenet-200 folder.')
    return FolderRecords(
      tiny_imagenet.files(data_dir, 'train' if split == 'train' else 'val'), size, channels
    )
  return TfdsRecords(name, sources.tfds_split(name, split), data_dir, size, channels)


def read_split(
  dataset: ml_collections.ConfigDict, split: str, *, download: bool
) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as uint8 (N, S, S, C) images and int32 (N,) labels, for the resident
  pipeline."""
  name = dataset.name
  if name == IMAGE_FOLDER or name in VARIABLE_SIZE:
    return read_all(open_records(dataset, split))
  if reads_facts_from_data(name):
    info = dataset_info(dataset)
    tfds_name = tfds_named.tfds_name(name)
    return tfds_named.load(
      tfds_name,
      split,
      data_dir=dataset.data_dir,
      download=download,
      size=info['image_size'],
      channels=info['channels'],
      validation_split=dataset.get('validation_split'),
    )
  return sources.load_split(name, split, data_dir=dataset.data_dir, download=download)


def num_examples(dataset: ml_collections.ConfigDict, split: str) -> int:
  """How many examples `split` holds, without reading them (tfds: from its metadata)."""
  name, data_dir = dataset.name, dataset.data_dir
  if name in ('digits', 'tiny_imagenet', IMAGE_FOLDER):
    return len(open_records(dataset, split))
  import tensorflow_datasets as tfds

  if reads_facts_from_data(name):
    name = tfds_named.tfds_name(name)
    tfds_name = tfds_named.split_name(
      tfds_named.features(name, data_dir), split, dataset.get('validation_split')
    )
  else:
    tfds_name = sources.tfds_split(name, split)
  splits_info = tfds.builder(name, data_dir=data_dir).info.splits
  if tfds_name in splits_info:
    return splits_info[tfds_name].num_examples
  return len(open_records(dataset, split))  # Metadata without split sizes.
