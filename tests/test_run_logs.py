"""What a run writes to TensorBoard beside loss and learning rate: throughput and norms."""

import math
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmm_vit_jax.training import loop
from gmm_vit_jax.training.throughput import Throughput
from tests.test_training import tiny_config
from tests.workdir_testing import restored_state

pytestmark = pytest.mark.usefixtures('quick_compiles')

NEW_SCALARS = ('images_per_s', 'steps_per_s', 'train_grad_norm', 'train_param_norm')


def test_tensorboard_has_throughput_and_norms(tmp_path):
  config = tiny_config(epochs=1)
  config.log_every_steps = 5
  summary = loop.train_and_evaluate(config, str(tmp_path))
  last = summary['step']
  events = EventAccumulator(str(tmp_path))
  events.Reload()
  tags = events.Tags()['scalars']
  for name in NEW_SCALARS + ('train_loss', 'learning_rate'):
    assert name in tags, (name, tags)
    values = [e.value for e in events.Scalars(name)]
    assert values and all(math.isfinite(v) and v > 0 for v in values), (name, values)
  # The first log follows the compiled first step, which the rates leave out.
  steps = [e.step for e in events.Scalars('steps_per_s')]
  assert steps == [e.step for e in events.Scalars('train_loss')] and steps[-1] == last
  for images, rate in zip(events.Scalars('images_per_s'), events.Scalars('steps_per_s')):
    assert images.value == pytest.approx(rate.value * config.batch_size, rel=1e-5)
  # The norm of the parameters the run ended with, against the last window's mean: the
  # last window's steps move the weights by a tiny fraction of their norm.
  params = [
    x
    for path, x in restored_state(str(tmp_path), last)
    if re.match(r"(\.params\b|\['params'\])", path)
  ]
  assert params
  final_norm = math.sqrt(sum(float(np.sum(np.square(x.astype(np.float64)))) for x in params))
  assert events.Scalars('train_param_norm')[-1].value == pytest.approx(final_norm, rel=1e-2)


def test_throughput_counts_steps_since_the_last_call_without_evaluation():
  now = [100.0]
  throughput = Throughput(batch_size=32, clock=lambda: now[0])
  assert throughput.rates(1) == {}
  throughput.start(1)
  now[0] = 102.0
  assert throughput.rates(5) == {'steps_per_s': 2.0, 'images_per_s': 64.0}
  now[0] = 110.0
  throughput.pause(6.0)  # An evaluation of 6 s in the window of 2 s of training.
  assert throughput.rates(9) == {'steps_per_s': 2.0, 'images_per_s': 64.0}
  assert throughput.rates(9) == {}
