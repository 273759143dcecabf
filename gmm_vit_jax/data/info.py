"""Facts about each dataset: image geometry, classes and normalisation constants.

Normalisation constants are the reference's (SPEC section 4). Digits are the
scikit-learn 8x8 images, stored as uint8 grey levels 0..16 scaled by 255/16; their
mean and std are those of the whole 1,797-image set on that [0, 1] scale.
"""

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')
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
DIGIT_CLASSES = tuple(str(i) for i in range(10))

DATASET_INFO = {
    'cifar10': dict(image_size=32, channels=3, num_classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    class_names=CIFAR10_CLASSES),
    'cifar100': dict(image_size=32, channels=3, num_classes=100,
                     mean=(0.5070, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     class_names=CIFAR100_CLASSES),
    'svhn_cropped': dict(image_size=32, channels=3, num_classes=10,
                         mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                         class_names=DIGIT_CLASSES),
    'digits': dict(image_size=8, channels=1, num_classes=10,
                   mean=(0.3053,), std=(0.3760,), class_names=DIGIT_CLASSES),
}


def dataset_info(name: str) -> dict:
  if name not in DATASET_INFO:
    raise ValueError(f'dataset.name={name!r} is not supported; choose one of '
                     f'{tuple(DATASET_INFO)}.')
  return DATASET_INFO[name]
