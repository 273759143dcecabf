"""Dataset loading: the real tfds code on tfds's mock data, and the bundled digits."""

import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import gmm_vit_cifar10
from gmm_vit_jax import errors
from gmm_vit_jax.data import sources
from gmm_vit_jax.training import loop

pytestmark = pytest.mark.usefixtures('quick_compiles')


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'svhn_cropped'])
def test_tfds_splits_load_as_uint8_arrays(name):
  with tfds.testing.mock_data(num_examples=6):
    images, labels = sources.load_split(name, 'test', data_dir=None, download=False)
  assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.dtype == np.int32


def test_missing_tfds_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(RuntimeError, match='download_and_prepare'):
    sources.load_split('cifar10', 'train', data_dir=str(tmp_path), download=False)


def test_tfds_knows_where_it_would_download_from():
  urls = sources.download_urls(tfds.builder('cifar10', data_dir='/nonexistent'))
  assert urls == ['https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz']


def test_an_unreachable_download_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
  # .invalid never resolves (RFC 2606): the same answer a machine without network gets.
  monkeypatch.setattr(
    sources, 'download_urls', lambda builder: ['https://cifar.invalid/cifar-10-binary.tar.gz']
  )
  started = time.monotonic()
  with pytest.raises(errors.DatasetUnavailableError) as failed:
    sources.load_split('cifar10', 'train', data_dir=str(tmp_path), download=True)
  assert time.monotonic() - started < 2 * sources.PROBE_TIMEOUT_S
  message = str(failed.value)
  assert message.startswith(f"The tfds dataset 'cifar10' is not prepared in {tmp_path}")
  assert 'cifar.invalid cannot be reached: ConnectionError' in message
  assert failed.value.__cause__ is None and failed.value.__suppress_context__
  assert os.listdir(tmp_path) == []


def test_a_failed_download_removes_what_it_wrote(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'unreachable', lambda urls: None)

  def partial_download(self, *args, **kwargs):
    os.makedirs(os.path.join(tmp_path, 'downloads', 'cifar10.partial'))
    os.makedirs(os.path.join(self.data_dir + '.incomplete'))
    raise ConnectionError('connection reset by peer')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', partial_download)
  with pytest.raises(
    errors.DatasetUnavailableError, match='the download failed: ConnectionError: connection reset'
  ):
    sources.load_split('cifar10', 'train', data_dir=str(tmp_path), download=True)
  assert os.listdir(tmp_path) == []


def test_digits_split_is_fixed_and_disjoint():
  x_train, y_train = sources.load_split('digits', 'train', data_dir=None, download=False)
  x_test, y_test = sources.load_split('digits', 'test', data_dir=None, download=False)
  assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
  assert x_train.dtype == np.uint8 and x_train.max() == 255
  assert np.bincount(y_test).min() >= 35  # Stratified: every class is in the test split.
  train_rows = {r.tobytes() for r in x_train}
  assert sum(r.tobytes() in train_rows for r in x_test) < 5  # Only exact duplicate digits.


def test_paper_config_trains_on_tfds_data(tmp_path):
  config = gmm_vit_cifar10.get_config('cifar100')
  config.model.update(dict(dim=16, depth=1, num_heads=2, head_dim=8, patch_size=8))
  config.update(dict(batch_size=16, eval_batch_size=16, epochs=2))
  config.schedule.warmup_epochs = 1
  config.dataset.download = False
  # The CIFAR-10 notebook test compiles the full recipe; AutoAugment alone takes a minute.
  config.augment.autoaugment = 'none'
  with tfds.testing.mock_data(num_examples=32):
    summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary['completed'] and summary['step'] == 2 * (32 * 3 // 16)
  assert np.isfinite(summary['eval_loss'])
