"""Gradient accumulation: k micro-batches through optax.MultiSteps make the update of one batch
k times larger."""

import jax
import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax import sharding
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.sources import load_split
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training.optimizer import make_optimizer
from gmm_vit_jax.training.state import Metrics, TrainState
from gmm_vit_jax.training.step import make_train_step
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')


def deterministic_config(accum: int):
  """No randomness that depends on the step: no augmentation, dropout or stochastic depth,
  so a micro-batch sees exactly its rows of the big batch."""
  config = tiny_config()
  config.augment.update(
    dict(flip=False, crop_padding=0, autoaugment='none', erasing_prob=0.0, mix_prob=0.0)
  )
  config.model.stochastic_depth = 0.0
  config.grad_accum_steps = accum
  return config


def train(config, batches, images, labels):
  """The initial state and the one after each train step, one per entry of `batches` (each
  (B,) row indices)."""
  tx = make_optimizer(config, steps_per_epoch=10)
  graphdef, params, buffers = nnx.split(build_from_config(config), nnx.Param, ...)
  params, buffers = nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)
  state = TrainState(
    step=np.int32(0),
    params=params,
    buffers=buffers,
    opt_state=tx.init(params),
    ema=params if config.ema_decay else None,
  )
  step = make_train_step(
    graphdef,
    tx,
    config,
    dataset_info('digits'),
    out_sharding=sharding.replicated(sharding.make_mesh()),
    donate=False,
  )
  initial, history = state, []
  for index in batches:
    state, _ = step(state, Metrics.zeros(), images, labels, index, False)
    history.append(state)
  return initial, history


def test_four_micro_batches_of_32_equal_one_batch_of_128():
  images, labels = load_split('digits', 'train', data_dir=None, download=False)
  index = np.random.default_rng(0).permutation(len(labels))[:128].astype(np.int32)
  initial, (big,) = train(deterministic_config(1), [index], images, labels)
  _, micro = train(deterministic_config(4), np.split(index, 4), images, labels)
  leaves = lambda state: jax.tree.leaves(state.params)
  # No update until the fourth micro-batch; then the update of the whole batch.
  for before in micro[:3]:
    for a, b in zip(leaves(before), leaves(initial)):
      np.testing.assert_array_equal(a, b)
  for a, b, start in zip(leaves(micro[3]), leaves(big), leaves(initial)):
    assert not np.allclose(b, start)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('value', [0, -2])
def test_grad_accum_steps_must_be_a_positive_integer(value):
  config = deterministic_config(value)
  with pytest.raises(ValueError, match='grad_accum_steps'):
    make_optimizer(config, 10)
