"""What each dataset is: image size, channels, classes and normalisation constants.

`DATASET_INFO[name]` holds image_size, channels, num_classes, mean, std and
class_names (index order of the labels; None where the names live with the data).
Mean and std are per channel, for pixels scaled to [0, 1].

digits (scikit-learn's bundled 8x8 handwritten digits) is single-channel with pixel
values 0..16; `digits_to_uint8` is the one scaling to uint8 every user applies. Its
mean and std are those of `digits_to_uint8(load_digits().images) / 255` over all
1,797 images and all pixels (tests/test_data_info.py recomputes them).
"""

import numpy as np

from gmm_vit_jax.errors import check_choice

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')

# The fine labels, in label order (alphabetical, as the dataset's meta file lists them).
CIFAR100_CLASSES = (
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
    'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
    'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest', 'fox',
    'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse', 'mushroom',
    'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road',
    'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake',
    'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank',
    'telephone', 'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle',
    'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm')

DIGIT_CLASSES = tuple(str(d) for d in range(10))

DIGITS_MAX_VALUE = 16

DATASET_INFO = {
    'cifar10': dict(image_size=32, channels=3, num_classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    class_names=CIFAR10_CLASSES),
    'cifar100': dict(image_size=32, channels=3, num_classes=100,
                     mean=(0.5070, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     class_names=CIFAR100_CLASSES),
    # Label i is the digit i (tfds maps the source's '10' for zero to 0).
    'svhn_cropped': dict(image_size=32, channels=3, num_classes=10,
                         mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                         class_names=DIGIT_CLASSES),
    'digits': dict(image_size=8, channels=1, num_classes=10,
                   mean=(0.3053,), std=(0.3759,), class_names=DIGIT_CLASSES),
    # The 200 class ids (wnids.txt) come with the manual download, not with the code.
    'tiny_imagenet': dict(image_size=64, channels=3, num_classes=200,
                          mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),
                          class_names=None),
    # ILSVRC-2012 at 224x224 (the shorter side resized, the centre cropped), streamed by the
    # grain pipeline; the usual ImageNet constants. Its test split is tfds 'validation'.
    'imagenet2012': dict(image_size=224, channels=3, num_classes=1000,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         class_names=None),
}


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
  """scikit-learn digits pixel values 0..16 -> uint8 0..255, rounded."""
  return np.round(np.asarray(values) * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)


def dataset_info(name: str) -> dict:
  """The entry for `name`; a clear error naming the config field otherwise."""
  check_choice('dataset.name', name, tuple(DATASET_INFO))
  return DATASET_INFO[name]
