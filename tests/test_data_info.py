"""Dataset facts: consistent entries, digits statistics recomputed from the data."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from gmm_vit_jax.data.info import CIFAR100_CLASSES, DATASET_INFO, dataset_info, digits_to_uint8


@pytest.mark.parametrize('name', sorted(DATASET_INFO))
def test_entries_are_consistent(name):
  info = DATASET_INFO[name]
  assert len(info['mean']) == len(info['std']) == info['channels']
  assert all(0 < s < 1 for s in info['std']) and all(0 < m < 1 for m in info['mean'])
  if info['class_names'] is not None:
    assert len(info['class_names']) == len(set(info['class_names'])) == info['num_classes']


def test_digits_statistics_are_those_of_the_data():
  pixels = digits_to_uint8(load_digits().images).astype(np.float64) / 255.0
  assert pixels.max() == 1.0 and pixels.min() == 0.0
  np.testing.assert_allclose(DATASET_INFO['digits']['mean'], [pixels.mean()], atol=5e-5)
  np.testing.assert_allclose(DATASET_INFO['digits']['std'], [pixels.std()], atol=5e-5)


def test_cifar100_fine_labels_are_in_label_order():
  assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
  assert CIFAR100_CLASSES[0] == 'apple' and CIFAR100_CLASSES[99] == 'worm'


def test_unknown_dataset_names_the_field():
  with pytest.raises(ValueError, match='dataset.name'):
    dataset_info('imagenet')
