"""What each dataset is: image size, channels, classes and normalisation constants.

`DATASET_INFO[name]` holds image_size, channels, num_classes, mean, std, class_names
(index order of the labels; None where the names live with the data) and background
('dark' or 'light' where the images share one, else None) of the built-in datasets.
Mean and std are per channel, for pixels scaled to [0, 1].

Two more kinds of dataset.name have their facts read from the data
(gmm_vit_jax/data/facts.py): 'image_folder' (dataset.data_dir holds train/<class>/ and
test/<class>/) and 'tfds:NAME' (any tfds dataset with an image and a class label). The
trainer writes what it read into the run's config (`resolve`), so export and evaluation
need the data no more. `dataset_info` takes a config's dataset section for all of them.

digits (scikit-learn's bundled 8x8 handwritten digits) is single-channel with pixel
values 0..16; `digits_to_uint8` is the one scaling to uint8 every user applies. Its
mean and std are those of `digits_to_uint8(load_digits().images) / 255` over all
1,797 images and all pixels (tests/test_data_info.py recomputes them).
"""

import ml_collections
import numpy as np

from gmm_vit_jax import errors
from gmm_vit_jax.errors import check_choice

CIFAR10_CLASSES = (
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
)

# The fine labels, in label order (alphabetical, as the dataset's meta file lists them).
CIFAR100_CLASSES = (
  'apple',
  'aquarium_fish',
  'baby',
  'bear',
  'beaver',
  'bed',
  'bee',
  'beetle',
  'bicycle',
  'bottle',
  'bowl',
  'boy',
  'bridge',
  'bus',
  'butterfly',
  'camel',
  'can',
  'castle',
  'caterpillar',
  'cattle',
  'chair',
  'chimpanzee',
  'clock',
  'cloud',
  'cockroach',
  'couch',
  'crab',
  'crocodile',
  'cup',
  'dinosaur',
  'dolphin',
  'elephant',
  'flatfish',
  'forest',
  'fox',
  'girl',
  'hamster',
  'house',
  'kangaroo',
  'keyboard',
  'lamp',
  'lawn_mower',
  'leopard',
  'lion',
  'lizard',
  'lobster',
  'man',
  'maple_tree',
  'motorcycle',
  'mountain',
  'mouse',
  'mushroom',
  'oak_tree',
  'orange',
  'orchid',
  'otter',
  'palm_tree',
  'pear',
  'pickup_truck',
  'pine_tree',
  'plain',
  'plate',
  'poppy',
  'porcupine',
  'possum',
  'rabbit',
  'raccoon',
  'ray',
  'road',
  'rocket',
  'rose',
  'sea',
  'seal',
  'shark',
  'shrew',
  'skunk',
  'skyscraper',
  'snail',
  'snake',
  'spider',
  'squirrel',
  'streetcar',
  'sunflower',
  'sweet_pepper',
  'table',
  'tank',
  'telephone',
  'television',
  'tiger',
  'tractor',
  'train',
  'trout',
  'tulip',
  'turtle',
  'wardrobe',
  'whale',
  'willow_tree',
  'wolf',
  'woman',
  'worm',
)

DIGIT_CLASSES = tuple(str(d) for d in range(10))

DIGITS_MAX_VALUE = 16
IMAGE_FOLDER = 'image_folder'
TFDS_PREFIX = 'tfds:'
# The facts of a dataset that a config's dataset section may state (None: the dataset's own).
FACTS = ('image_size', 'channels', 'class_names', 'mean', 'std', 'background')

DATASET_INFO = {
  'cifar10': dict(
    image_size=32,
    channels=3,
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    class_names=CIFAR10_CLASSES,
    background=None,
  ),
  'cifar100': dict(
    image_size=32,
    channels=3,
    num_classes=100,
    mean=(0.5070, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    class_names=CIFAR100_CLASSES,
    background=None,
  ),
  # Label i is the digit i (tfds maps the source's '10' for zero to 0).
  'svhn_cropped': dict(
    image_size=32,
    channels=3,
    num_classes=10,
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    class_names=DIGIT_CLASSES,
    background=None,
  ),
  'digits': dict(
    image_size=8,
    channels=1,
    num_classes=10,
    mean=(0.3053,),
    std=(0.3759,),
    class_names=DIGIT_CLASSES,
    background='dark',
  ),
  # The 200 class ids (wnids.txt) come with the manual download, not with the code.
  'tiny_imagenet': dict(
    image_size=64,
    channels=3,
    num_classes=200,
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
    class_names=None,
    background=None,
  ),
  # ILSVRC-2012 at 224x224 (the shorter side resized, the centre cropped), streamed by the
  # grain pipeline; the usual ImageNet constants. Its test split is tfds 'validation'.
  'imagenet2012': dict(
    image_size=224,
    channels=3,
    num_classes=1000,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    class_names=None,
    background=None,
  ),
}


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
  """scikit-learn digits pixel values 0..16 -> uint8 0..255, rounded."""
  return np.round(np.asarray(values) * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)


def reads_facts_from_data(name: str) -> bool:
  """Whether dataset `name`'s facts come from its data rather than from DATASET_INFO."""
  return name == IMAGE_FOLDER or name.startswith(TFDS_PREFIX)


def check_name(name: str) -> None:
  """A ConfigError naming the field unless `name` is a dataset this project reads."""
  if not (
    isinstance(name, str)
    and (reads_facts_from_data(name) or name in DATASET_INFO)
    and name != TFDS_PREFIX
  ):
    raise errors.ConfigError(
      f'dataset.name={name!r} is not supported; choose one of {tuple(DATASET_INFO)}, '
      f"'{IMAGE_FOLDER}' (with dataset.data_dir) or 'tfds:NAME' for any tfds dataset."
    )


def dataset_info(dataset: str | ml_collections.ConfigDict) -> dict:
  """The facts of a dataset: image_size, channels, num_classes, mean, std, class_names,
  background.

  Args:
    dataset: a config's dataset section (its name, data_dir and the FACTS it states), or
      the name of a built-in dataset.
  """
  if isinstance(dataset, str):
    check_choice('dataset.name', dataset, tuple(DATASET_INFO))
    return DATASET_INFO[dataset]
  check_name(dataset.name)
  stated = {k: dataset.get(k) for k in FACTS if dataset.get(k) is not None}
  if reads_facts_from_data(dataset.name) and set(FACTS) - {'background'} <= set(stated):
    info = {'background': None, **stated}  # A run's resolved config: no data needed.
  elif reads_facts_from_data(dataset.name):
    from gmm_vit_jax.data import facts  # It reads files; the built-in table needs none of it.

    info = {**facts.read(dataset), **stated}
  else:
    info = dict(DATASET_INFO[dataset.name])
    for field in ('image_size', 'channels'):
      if stated.get(field, info[field]) != info[field]:
        raise errors.ConfigError(
          f'dataset.{field}={stated[field]} does not fit {dataset.name!r}, whose images are '
          f'{info["image_size"]}x{info["image_size"]}x{info["channels"]}: leave it None.'
        )
    if len(stated.get('class_names', ())) not in (0, info['num_classes']):
      raise errors.ConfigError(
        f'dataset.class_names names {len(stated["class_names"])} '
        f'classes; {dataset.name!r} has {info["num_classes"]}.'
      )
    info.update(stated)
  if info['class_names'] is not None:
    info['class_names'] = tuple(info['class_names'])
    info['num_classes'] = len(info['class_names'])
  for field in ('mean', 'std'):
    info[field] = tuple(info[field])
    if len(info[field]) != info['channels']:
      raise errors.ConfigError(
        f'dataset.{field}={info[field]} must give one value for each '
        f'of the {info["channels"]} channels.'
      )
  return info


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose dataset section states every fact read from the data (image
  folders, tfds:NAME), so the run's stored config carries them; others come back as they are."""
  if not reads_facts_from_data(config.dataset.name):
    return config
  info = dataset_info(config.dataset)
  resolved = config.copy_and_resolve_references()
  for field in FACTS:
    if resolved.dataset.get(field) is None and info[field] is not None:
      resolved.dataset[field] = info[field]
  if resolved.dataset.get('validation_split') is None:
    from gmm_vit_jax.data import facts

    resolved.dataset.validation_split = facts.validation_split(config.dataset)
  return resolved
