"""The validation split: stratified, seeded, disjoint from what trains, and the split the best
checkpoint is chosen on when set."""

import numpy as np
import pytest

from gmm_vit_jax.data import sources, validation
from gmm_vit_jax.training import loop
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')


def test_holdout_is_stratified_seeded_and_a_partition():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 7, size=500)
  train, val = validation.holdout(labels, 0.2, seed=5)
  assert np.intersect1d(train, val).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(500))
  for c in range(7):
    assert np.sum(labels[val] == c) == round(0.2 * np.sum(labels == c))
  again_train, again_val = validation.holdout(labels, 0.2, seed=5)
  np.testing.assert_array_equal(again_val, val)
  np.testing.assert_array_equal(again_train, train)
  _, other = validation.holdout(labels, 0.2, seed=6)
  assert not np.array_equal(other, val)


@pytest.mark.parametrize('fraction', [1.0, -0.1, 1.5])
def test_bad_fraction_names_the_field(fraction):
  with pytest.raises(ValueError, match='dataset.validation'):
    validation.check_fraction(fraction)


def test_off_means_none():
  assert validation.check_fraction(None) is None and validation.check_fraction(0) is None


def test_training_holds_out_and_selects_on_validation(tmp_path):
  config = tiny_config(epochs=2)
  config.dataset.validation = 0.2
  summary = loop.train_and_evaluate(config, str(tmp_path))
  counts = np.bincount(sources.load_split('digits', 'train', data_dir=None, download=False)[1])
  held = int(np.round(0.2 * counts).sum())
  # Fewer training rows, fewer steps: (1437 - held) // 64 per epoch.
  assert summary['step'] == 2 * ((1437 - held) // config.batch_size)
  assert 0 <= summary['val_accuracy'] <= summary['best_val_accuracy'] <= 1
  assert 'eval_accuracy' in summary and 'best_eval_accuracy' in summary
