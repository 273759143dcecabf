"""python -m gmm_vit_jax.evaluate: the run's own figures back, bundles, overrides, errors."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gmm_vit_jax import config_overrides, errors, evaluate, export
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import restore_run
from tests.model_testing import QUICK_COMPILES_ENV
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, summary) of a tiny digits run evaluated after each of its 2 epochs."""
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, loop.train_and_evaluate(tiny_config(epochs=2), workdir)


def _evaluate(*args):
  return subprocess.run(
    [sys.executable, '-m', 'gmm_vit_jax.evaluate', *args],
    cwd=ROOT,
    env={**os.environ, **QUICK_COMPILES_ENV},
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_the_command_gives_the_figures_the_run_logged(trained, tmp_path):
  workdir, summary = trained
  done = _evaluate(f'--workdir={workdir}', '--json', f'--out={tmp_path}')
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['step'] == summary['best_step']
  assert result['top1'] == summary['best_eval_accuracy']
  if summary['best_step'] == summary['step']:
    assert result['loss'] == pytest.approx(summary['eval_loss'], rel=1e-5)
  assert result['top1'] <= result['top5'] <= 1.0
  assert sorted(result['per_class']) == [str(d) for d in range(10)]
  counts = json.loads((tmp_path / 'metrics.json').read_text())['confusion']
  assert np.sum(counts) == result['images'] == 360
  assert np.trace(counts) / np.sum(counts) == result['top1']
  with Image.open(tmp_path / 'confusion.png') as image:
    assert image.width > 300 and image.height > 300
  assert 'top-1' in done.stdout and 'accuracy  images' in done.stdout


def test_a_bundle_gives_the_same_figures_as_its_run(trained, tmp_path):
  workdir, _ = trained
  run = restore_run(workdir, 'best')
  export.save_bundle(run.model, run.config, str(tmp_path / 'bundle'), platforms=('cpu',))
  config = config_overrides.apply(run.config, {})
  from_run = evaluate.scores(
    *evaluate.predictions(evaluate.from_run(workdir, 'best', 'raw'), config, 'test'), 10
  )
  from_bundle = evaluate.scores(
    *evaluate.predictions(evaluate.from_bundle(str(tmp_path / 'bundle')), config, 'test'), 10
  )
  assert from_bundle['top1'] == from_run['top1']
  np.testing.assert_array_equal(from_bundle['confusion'], from_run['confusion'])
  assert from_bundle['loss'] == pytest.approx(from_run['loss'], rel=1e-5)


def test_scores_against_hand_counted_predictions():
  logits = np.array(
    [
      [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # true 0: top-1
      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # true 0: last of 6, outside top-5
      [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],  # true 2: second, inside top-5
      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    ]
  )  # true 3: a tie, argmax picks 0
  labels = np.array([0, 0, 2, 3])
  result = evaluate.scores(logits, labels, 6)
  assert result['top1'] == 0.25 and result['top5'] == 0.75
  expected_loss = np.mean(
    [np.log(np.exp(row - row.max()).sum()) - (row[y] - row.max()) for row, y in zip(logits, labels)]
  )
  assert result['loss'] == pytest.approx(expected_loss)
  assert result['confusion'][0, 0] == 1 and result['confusion'][0, 5] == 1
  assert result['confusion'][2, 1] == 1 and result['confusion'][3, 0] == 1
  np.testing.assert_array_equal(result['per_class_count'], [2, 0, 1, 1, 0, 0])
  assert result['per_class'][0] == 0.5 and np.isnan(result['per_class'][1])


def test_overrides_take_the_type_of_the_value_they_replace():
  config = ml_collections.ConfigDict(
    dict(
      eval_batch_size=8, dataset=dict(name='digits', data_dir=None, validation=None, download=True)
    )
  )
  rest, overrides = config_overrides.split_argv(
    [
      'prog',
      '--config.eval_batch_size=16',
      '--split=test',
      '--config.dataset.validation',
      '0.1',
      '--config.dataset.download=false',
      '--config.dataset.data_dir=/data',
    ]
  )
  assert rest == ['prog', '--split=test']
  changed = config_overrides.apply(config, overrides)
  assert changed.eval_batch_size == 16 and changed.dataset.validation == 0.1
  assert changed.dataset.download is False and changed.dataset.data_dir == '/data'
  assert config.eval_batch_size == 8  # The original is untouched.
  with pytest.raises(errors.ConfigError, match="did you mean 'dataset.name'"):
    config_overrides.apply(config, {'dataset.nmae': 'digits'})
  with pytest.raises(errors.ConfigError, match='expected a whole number'):
    config_overrides.apply(config, {'eval_batch_size': 'many'})


@pytest.mark.parametrize(
  'args, message',
  [
    ((), 'name what to evaluate'),
    (('--config.dataset.nmae=x',), "did you mean 'dataset.name'"),
    (('--split=validation',), 'a validation split needs'),
  ],
)
def test_mistakes_are_one_line_and_exit_1(trained, args, message):
  workdir, _ = trained
  done = _evaluate(*((f'--workdir={workdir}',) if args else ()), *args)
  assert done.returncode == errors.EXIT_ERROR
  assert 'Traceback' not in done.stderr
  error_lines = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert len(error_lines) == 1 and message in error_lines[0], done.stderr
