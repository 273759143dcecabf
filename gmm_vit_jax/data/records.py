"""Random-access sources of single examples for the streaming pipeline: record i is
(uint8 (S, S, C) image at the dataset's image size S, int label), read and decoded on the
host (in grain's workers), never held whole in memory except the offline digits."""

import numpy as np
from PIL import Image

from gmm_vit_jax import storage
from gmm_vit_jax.data import sources, tiny_imagenet
from gmm_vit_jax.data.info import dataset_info


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
  """(H, W, C') uint8 -> (size, size, channels): the shorter side resized to `size`
  (bicubic), the centre cropped square; grey images repeated to RGB. Images already the
  right size pass through unchanged."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] != channels:
    image = np.repeat(image[..., :1], channels, axis=-1)
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  mode = 'L' if channels == 1 else 'RGB'
  resized = np.asarray(Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode)
                       .resize((nw, nh), Image.BICUBIC)).reshape(nh, nw, channels)
  top, left = (nh - size) // 2, (nw - size) // 2
  return resized[top:top + size, left:left + size]


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

  def __init__(self, name: str, split: str, data_dir: str | None, size: int, channels: int):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.size, self.channels = size, channels
    self._source = None

  def _open(self, decode: bool = True):
    import tensorflow_datasets as tfds
    decoders = None if decode else {'image': tfds.decode.SkipDecoding()}
    try:
      return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                              download=False, decoders=decoders)
    except Exception as e:
      raise RuntimeError(f'tfds.data_source({self.name!r}, split={self.split!r}) failed in '
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
    return fit_image(np.asarray(record['image']), self.size, self.channels), int(record['label'])

  def labels(self) -> np.ndarray:
    undecoded = self._open(decode=False)
    return np.array([int(undecoded[i]['label']) for i in range(len(undecoded))], np.int32)


class FolderRecords:
  """Image files with their labels, decoded with PIL (Tiny-ImageNet's folders)."""

  def __init__(self, found: list[tuple[str, int]], size: int, channels: int):
    self.paths = [path for path, _ in found]
    self._labels = np.array([label for _, label in found], np.int32)
    self.size, self.channels = size, channels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    with storage.open_file(self.paths[i], 'rb') as f, Image.open(f) as image:
      array = np.asarray(image.convert('L' if self.channels == 1 else 'RGB'))
    return fit_image(array, self.size, self.channels), int(self._labels[i])

  def labels(self) -> np.ndarray:
    return self._labels


# Datasets whose images come in many sizes: tfds cannot batch them whole, so even a
# resident split is read through the records, each image fitted to the dataset's size.
VARIABLE_SIZE = ('imagenet2012',)


def read_all(records) -> tuple[np.ndarray, np.ndarray]:
  """Every record as (N, S, S, C) uint8 images and (N,) int32 labels."""
  examples = [records[i] for i in range(len(records))]
  return (np.stack([image for image, _ in examples]),
          np.array([label for _, label in examples], np.int32))


def open_records(name: str, split: str, *, data_dir: str | None):
  """The records of `split` ('train' or 'test') of dataset `name`."""
  info = dataset_info(name)
  if split not in sources.TFDS_SPLITS:
    raise ValueError(f'split={split!r} is not supported; choose one of '
                     f'{tuple(sources.TFDS_SPLITS)}.')
  size, channels = info['image_size'], info['channels']
  if name == 'digits':
    return ArrayRecords(*sources.load_split(name, split, data_dir=None, download=False))
  if name == 'tiny_imagenet':
    if data_dir is None:
      raise ValueError('dataset.data_dir must name the unzipped tiny-imagenet-200 folder.')
    return FolderRecords(tiny_imagenet.files(data_dir, 'train' if split == 'train' else 'val'),
                         size, channels)
  return TfdsRecords(name, sources.tfds_split(name, split), data_dir, size, channels)


def num_examples(name: str, split: str, *, data_dir: str | None) -> int:
  """How many examples `split` holds, without reading them (tfds: from its metadata)."""
  if name in ('digits', 'tiny_imagenet'):
    return len(open_records(name, split, data_dir=data_dir))
  import tensorflow_datasets as tfds
  splits = tfds.builder(name, data_dir=data_dir).info.splits
  tfds_name = sources.tfds_split(name, split)
  if tfds_name in splits:
    return splits[tfds_name].num_examples
  return len(open_records(name, split, data_dir=data_dir))  # Metadata without split sizes.
