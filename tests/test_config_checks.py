"""Every field of every config file has an allowed range, and a value outside it is one
ConfigError naming the field; random values either pass (and the model builds) or are
refused the same way, never with another exception."""

import importlib
import numbers
import os
import subprocess
import sys

import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from configs import tiny
from gmm_vit_jax import errors
from gmm_vit_jax.training import config_checks
from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(ROOT, 'configs'))
  if f.endswith('.py') and hasattr(importlib.import_module(f'configs.{f[:-3]}'), 'get_config')
)

# Where zero means something: a seed, reading in-process, no padding, no warmup, no trace;
# decays, learning rates at the schedule's ends, probabilities and rates that switch a
# feature off.
ZERO_ALLOWED = {
  'seed',
  'dataset.grain_workers',
  'augment.crop_padding',
  'schedule.warmup_epochs',
  'profile_steps',
  'profile_start_step',
  'optimizer.weight_decay',
  'schedule.init_learning_rate',
  'schedule.end_learning_rate',
  'label_smoothing',
  'augment.erasing_prob',
  'augment.mix_prob',
  'augment.cutmix_prob',
  'patch_selection.probability',
  'patch_selection.decay',
  'optimizer.b1',
  'optimizer.b2',
  'ema_decay',
  'model.dropout',
  'model.emb_dropout',
  'model.stochastic_depth',
  'model.head_dropout',
  'progress_max_lines',
  'augment.randaugment_ops',
  'augment.randaugment_magnitude',
  'augment.randaugment_magnitude_std',
}
# Probabilities, fractions and rates: none may exceed 1.
AT_MOST_ONE = {
  'dataset.validation',
  'dataset.resident_share',
  'label_smoothing',
  'optimizer.b1',
  'optimizer.b2',
  'ema_decay',
  'augment.erasing_prob',
  'augment.erasing_min_aspect',
  'augment.mix_prob',
  'augment.cutmix_prob',
  'patch_selection.keep',
  'patch_selection.probability',
  'model.dropout',
  'model.emb_dropout',
  'model.stochastic_depth',
  'model.head_dropout',
}


def get_config(name: str) -> ml_collections.ConfigDict:
  return importlib.import_module(f'configs.{name}').get_config()


def leaves(config: ml_collections.ConfigDict, prefix: str = ''):
  """(dotted field, value) of every field that is not a section."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, f'{prefix}{key}.')
    else:
      yield prefix + key, value


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def numeric_fields(config: ml_collections.ConfigDict) -> list[str]:
  """Fields holding a number or a tuple of numbers, and the None fields typed as floats."""
  fields = []
  for field, value in leaves(config):
    if is_number(value) or (
      isinstance(value, (tuple, list)) and value and all(map(is_number, value))
    ):
      fields.append(field)
  typed_none = ['dataset.validation', 'ema_decay', 'optimizer.grad_clip_norm']
  return list(dict.fromkeys(fields + typed_none))


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  *sections, name = field.split('.')
  target = config
  for section in sections:
    target = target[section]
  old = target[name]
  if isinstance(old, (tuple, list)):
    value = type(old)([value] * len(old))
  target[name] = value


def assert_refused(config: ml_collections.ConfigDict, field: str) -> None:
  with pytest.raises(errors.ConfigError) as error:
    config_checks.check(config)
  message = str(error.value)
  assert '\n' not in message and f'{field}=' in message, message


def test_every_field_of_every_config_has_a_rule():
  for name in CONFIG_NAMES:
    config = get_config(name)
    missing = {field for field, _ in leaves(config)} - set(config_checks.rules(config))
    assert not missing, f'{name}: no rule for {sorted(missing)}'


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_every_numeric_field_out_of_range_is_one_line(name):
  fields = numeric_fields(get_config(name))
  assert len(fields) > 40
  for field in fields:
    bad = [-1]
    if field not in ZERO_ALLOWED:
      bad.append(0)
    if field in AT_MOST_ONE:
      bad.append(1.5)
    for value in bad:
      config = get_config(name)
      try:
        set_field(config, field, value)
      except TypeError:  # 1.5 into an int field: the flag parser refuses it already.
        continue
      assert_refused(config, field)


@pytest.mark.parametrize(
  'field, value',
  [
    ('model.num_heads', 0),
    ('model.dim', 0),
    ('model.head_dim', 0),
    ('model.mlp_ratio', 0),
    ('model.depth', -1),
    ('model.dropout', 1.5),
    ('model.stochastic_depth', 1.5),
  ],
)
def test_the_quick_starts_model_fields_are_checked(field, value):
  config = get_config('quickstart')
  set_field(config, field, value)
  assert_refused(config, field)


@pytest.mark.parametrize(
  'override, message',
  [
    (
      '--config.model.num_heads=0',
      'error: model.num_heads=0 is not allowed: use a whole number >= 1.',
    ),
    (
      '--config.model.stochastic_depth=1.5',
      'error: model.stochastic_depth=1.5 is not allowed: use a number in [0, 1).',
    ),
  ],
)
def test_train_refuses_a_bad_model_field_in_one_line(tmp_path, override, message):
  workdir = tmp_path / 'run'
  done = subprocess.run(
    [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}', override],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
    timeout=300,
  )
  out = done.stdout + done.stderr
  assert done.returncode == errors.EXIT_ERROR, out[-3000:]
  assert out.strip().splitlines()[-1] == message and 'Traceback' not in out, out[-3000:]
  assert not workdir.exists()


# Small models (configs/tiny.py) keep an abstract build in milliseconds; the random values
# reach just beyond every range: negative, zero, fractions, above one, empty tuples.
NUMBERS = st.one_of(
  st.integers(-2, 12),
  st.floats(-1, 3),
  st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.5, 1e-3, float('nan'), float('inf')]),
)


@st.composite
def random_configs(draw):
  config = tiny.shrink(get_config(draw(st.sampled_from(CONFIG_NAMES))))
  fields = numeric_fields(config)
  for field in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=4, unique=True)):
    *sections, name = field.split('.')
    target = config
    for section in sections:
      target = target[section]
    if isinstance(target[name], (tuple, list)):
      value = tuple(draw(st.lists(st.integers(-1, 6), max_size=5)))
    else:
      value = draw(NUMBERS)
    try:
      target[name] = value
    except TypeError:  # A float into an int field: config_flags refuses it on the command line.
      pass
  return config


# No example database: a test run leaves nothing behind in the repository.
@settings(
  max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(random_configs())
def test_random_values_pass_or_are_one_config_error(config):
  try:
    config_checks.check(config)
  except errors.ConfigError as e:
    assert '\n' not in str(e)
