"""The moving average of the weights: its arithmetic against NumPy, its evaluation beside the
raw weights, and restoring or exporting either."""

import os

import jax
import numpy as np
import pytest

from gmm_vit_jax import errors, export
from gmm_vit_jax.data.sources import load_split
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import restore_model
from tests.test_grad_accum import deterministic_config, train
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')


@pytest.mark.parametrize('accum', [1, 2])
def test_ema_is_the_average_of_the_updated_params(accum):
  decay = 0.8
  config = deterministic_config(accum)
  config.ema_decay = decay
  images, labels = load_split('digits', 'train', data_dir=None, download=False)
  batches = np.arange(6 * 16, dtype=np.int32).reshape(6, 16)
  initial, states = train(config, batches, images, labels)
  expected = jax.tree.map(np.asarray, initial.params)
  for i, state in enumerate(states):
    if (i + 1) % accum == 0:  # Only updates move the average.
      expected = jax.tree.map(
        lambda e, p: decay * e + (1 - decay) * np.asarray(p), expected, state.params
      )
    for e, got in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema)):
      np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(states[-1].ema)[0], jax.tree.leaves(states[-1].params)[0])


def test_ema_is_evaluated_restored_and_exported(tmp_path):
  config = tiny_config(epochs=2)
  config.ema_decay = 0.9
  workdir = str(tmp_path / 'run')
  summary = loop.train_and_evaluate(config, workdir)
  assert 0.0 <= summary['eval_ema_accuracy'] <= 1.0 and np.isfinite(summary['eval_ema_loss'])
  assert summary['eval_ema_loss'] != summary['eval_loss']
  raw, _ = restore_model(workdir, 'latest', weights='raw')
  ema, _ = restore_model(workdir, 'latest', weights='ema')
  raw_vars, ema_vars = export.flat_variables(raw), export.flat_variables(ema)
  assert raw_vars.keys() == ema_vars.keys()
  assert any(not np.allclose(raw_vars[k], ema_vars[k]) for k in raw_vars)
  images, labels = load_split('digits', 'test', data_dir=None, download=False)
  export.save_bundle(ema, config, str(tmp_path / 'bundle'), platforms=('cpu',))
  logits = export.load(str(tmp_path / 'bundle')).predict(images)
  # The summary's figures are those of the last step, the latest checkpoint.
  accuracy = float(np.mean(np.argmax(logits, -1) == labels))
  np.testing.assert_allclose(accuracy, summary['eval_ema_accuracy'], atol=1e-6)


def test_ema_weights_of_a_run_without_ema_is_a_clear_error(tmp_path):
  workdir = str(tmp_path)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(tiny_config().to_json())
  with pytest.raises(errors.UserError, match='ema_decay is off'):
    restore_model(workdir, weights='ema')
  with pytest.raises(errors.UserError, match='weights='):
    restore_model(workdir, weights='average')


@pytest.mark.parametrize('value', [1.0, -0.5])
def test_bad_ema_decay_names_the_field(tmp_path, value):
  config = tiny_config(epochs=1)
  config.ema_decay = value
  with pytest.raises(ValueError, match='ema_decay'):
    loop.train_and_evaluate(config, str(tmp_path))
