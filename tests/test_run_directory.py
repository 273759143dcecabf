"""The run directory under the ways a user breaks a run: restarts, changed configs, damaged
checkpoints, divergence, bad values; each checked on a real workdir with a real run."""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from gmm_vit_jax import errors, export
from gmm_vit_jax.training import config_checks, loop
from gmm_vit_jax.training.checkpoint import Checkpointer, restore_run
from gmm_vit_jax.training.run_directory import RunDirectory
from gmm_vit_jax.training.state import TrainState
from tests.model_testing import QUICK_COMPILES_ENV
from tests.test_training import tiny_config
from tests.workdir_testing import files_with_times, restored_state, strict_json

pytestmark = pytest.mark.usefixtures('quick_compiles')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 22  # One epoch of the tiny config: checkpoints at 10, 20 and 22 (evaluated).


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished one-epoch tiny run; tests work on copies of it."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  summary = loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  assert summary['completed'] and summary['step'] == STEPS
  return workdir


def _copy(finished_run, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  return workdir


def _toy_state(step: int, value: float = 1.0) -> TrainState:
  return TrainState(
    step=jnp.int32(step),
    params={'w': jnp.full((3,), value)},
    buffers={},
    opt_state={'mu': jnp.zeros((3,))},
  )


def test_best_checkpoint_and_its_metrics_survive_restarts(tmp_path):
  config = tiny_config().checkpoint
  config.update(keep_last=1, keep_best=True)
  first = Checkpointer(str(tmp_path), config)
  first.save(_toy_state(1), metrics={'eval_accuracy': 0.9, 'eval_loss': 0.3})
  first.save(_toy_state(2), metrics={'eval_accuracy': 0.5, 'eval_loss': 0.9})
  first.close()
  for restart in range(2):  # Each restart is a new manager reading only what is on disk.
    again = Checkpointer(str(tmp_path), config)
    assert again.best() == (1, {'eval_accuracy': 0.9, 'eval_loss': 0.3})
    again.save(_toy_state(3 + restart))
    again.close()
  steps = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert steps == [1, 4]  # The best and the latest; 2 and 3 went as keep_last=1 says.


def test_export_takes_the_best_checkpoint_and_says_which(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  best = restore_run(workdir)
  checkpointer = Checkpointer(workdir, tiny_config().checkpoint)
  assert best.step == checkpointer.best()[0] and best.metrics == checkpointer.best()[1]
  checkpointer.close()
  assert restore_run(workdir, 'latest').step == STEPS
  assert restore_run(workdir, 10).metrics is None  # Saved between evaluations.
  with pytest.raises(errors.CheckpointError, match='no checkpoint of step 11; it has 10, 20, 22'):
    restore_run(workdir, 11)


def _export(workdir: str, out: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'gmm_vit_jax.export', f'--workdir={workdir}', f'--out={out}', *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
    timeout=300,
  )


def test_export_writes_only_into_a_new_folder_or_over_a_bundle(finished_run, tmp_path):
  """Into a folder of the user's: one line, nothing written; over a bundle: with
  --overwrite, which replaces it."""
  mine = tmp_path / 'mine'
  mine.mkdir()
  (mine / 'notes.txt').write_text('mine')
  refused = _export(finished_run, str(mine))
  assert refused.returncode == errors.EXIT_ERROR and refused.stdout == '', refused.stderr
  assert refused.stderr.strip().splitlines() == [
    f'error: --out {mine} holds files that are not part of a bundle (notes.txt): choose an '
    'empty or new --out; nothing was written.'
  ], refused.stderr[-3000:]
  assert os.listdir(mine) == ['notes.txt']

  bundle = tmp_path / 'bundle'
  run = restore_run(finished_run, 10)
  export.save_bundle(run.model, run.config, str(bundle), platforms=('cpu',))
  replaced = _export(finished_run, str(bundle), '--overwrite')
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert json.load(open(bundle / 'source.json'))['step'] == restore_run(finished_run).step
  assert export.load(str(bundle)).exported.platforms == export.PLATFORMS


def test_rerunning_a_finished_run_keeps_its_summary(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  stored = strict_json(os.path.join(workdir, 'summary.json'))
  assert loop.train_and_evaluate(tiny_config(epochs=1), workdir) == stored
  assert strict_json(os.path.join(workdir, 'summary.json')) == stored
  # Lost summary (a crash after the last save): rebuilt from the checkpoints' metrics.
  os.remove(os.path.join(workdir, 'summary.json'))
  rebuilt = loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  for key in ('eval_accuracy', 'eval_loss', 'eval_step', 'best_eval_accuracy', 'best_step'):
    assert rebuilt[key] == stored[key], key
  assert rebuilt['completed'] and rebuilt['train_steps_per_s'] is None
  assert strict_json(os.path.join(workdir, 'summary.json')) == rebuilt


def test_a_changed_config_is_refused_before_anything_is_written(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  before = files_with_times(workdir)
  config = tiny_config(epochs=2)
  config.optimizer.learning_rate = 1e-2
  with pytest.raises(errors.ConfigChangedError) as refused:
    loop.train_and_evaluate(config, workdir)
  message = str(refused.value)
  assert 'epochs 1 -> 2' in message and 'optimizer.learning_rate 0.003 -> 0.01' in message
  assert '--allow_config_change=epochs,optimizer.learning_rate' in message
  bigger = tiny_config(epochs=1)
  bigger.model.dim = 32
  with pytest.raises(errors.ConfigChangedError, match='another shape: model.dim 16 -> 32'):
    loop.train_and_evaluate(bigger, workdir)
  assert files_with_times(workdir) == before


def test_allowed_and_free_changes_go_on_and_are_recorded(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  config = tiny_config(epochs=2)
  config.log_every_steps = 5  # Free to change: how the run is watched, not what it learns.
  summary = loop.train_and_evaluate(config, workdir, allow_config_change=('epochs',))
  assert summary['completed'] and summary['step'] == 2 * STEPS
  stored = json.load(open(os.path.join(workdir, 'config.json')))
  assert stored['epochs'] == 2 and stored['log_every_steps'] == 5
  history = json.load(open(os.path.join(workdir, 'config_history.json')))
  assert [h['step'] for h in history] == [STEPS]
  assert history[0]['changes'] == {'epochs': [1, 2], 'log_every_steps': [10, 5]}
  with pytest.raises(errors.ConfigError, match='names seed, which did not change'):
    loop.train_and_evaluate(tiny_config(epochs=3), workdir, allow_config_change=('seed',))


def test_a_damaged_newest_checkpoint_is_skipped_and_kept(finished_run, tmp_path, caplog):
  workdir = _copy(finished_run, tmp_path)
  intact = restored_state(workdir, STEPS)
  os.remove(os.path.join(workdir, 'summary.json'))  # As if it crashed right after saving.
  newest = os.path.join(workdir, 'checkpoints', str(STEPS))
  for data in _array_files(newest):
    os.truncate(data, 0)
  with caplog.at_level('WARNING'):
    summary = loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  assert f'The checkpoint at step {STEPS} cannot be restored' in caplog.text
  assert summary['completed'] and summary['step'] == STEPS
  damaged = os.path.join(workdir, 'checkpoints_damaged', str(STEPS))
  assert os.path.isdir(damaged) and _array_files(damaged)
  # It went on from step 20 and, on a CPU, made exactly the step it had made before.
  for (path, want), (_, got) in zip(intact, restored_state(workdir, STEPS)):
    np.testing.assert_array_equal(got, want, err_msg=path)


def test_when_no_checkpoint_restores_nothing_is_moved(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  for step in (10, 20, STEPS):
    for data in _array_files(os.path.join(workdir, 'checkpoints', str(step))):
      os.truncate(data, 0)
  os.remove(os.path.join(workdir, 'summary.json'))
  with pytest.raises(errors.CheckpointError, match='None of the checkpoints .* restores'):
    loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20', str(STEPS)]
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))


def _array_files(checkpoint: str) -> list[str]:
  """The array data files of one orbax checkpoint."""
  return [
    os.path.join(root, f)
    for root, _, files in os.walk(checkpoint)
    for f in files
    if os.path.basename(root) == 'd'
  ]


def test_a_state_gone_nan_between_log_steps_is_never_saved(tmp_path):
  config = tiny_config(epochs=1)
  # At lr 1e6 the second update turns the weights NaN while the second loss is still finite,
  # so a loss check alone would save the poisoned state at step 2.
  config.optimizer.learning_rate = 1e6
  config.checkpoint.every_steps = 2
  with pytest.raises(errors.NonFiniteError, match='NaN or infinite'):
    loop.train_and_evaluate(config, str(tmp_path))
  saved = (
    [int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]
    if (tmp_path / 'checkpoints').exists()
    else []
  )
  for step in saved:
    for path, value in restored_state(str(tmp_path), step):
      assert np.all(np.isfinite(value)), (step, path)


def test_the_save_guard_refuses_a_nonfinite_state(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), tiny_config().checkpoint)
  checkpointer.save(_toy_state(1))
  with pytest.raises(errors.NonFiniteError, match=r'holds 1 NaN .*\(step 1\) is intact'):
    checkpointer.save(
      TrainState(
        step=jnp.int32(2),
        params={'w': jnp.array([1.0, jnp.nan])},
        buffers={},
        opt_state={'mu': jnp.zeros((2,))},
      )
    )
  checkpointer.close()
  assert sorted(d for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()) == ['1']


@pytest.mark.parametrize(
  'field,value,message',
  [
    (
      'optimizer.learning_rate',
      -1e-3,
      r'optimizer.learning_rate=-0.001 is not allowed: use a '
      r'number in \(0, inf\)',
    ),
    ('epochs', 0, 'epochs=0 is not allowed: use a whole number >= 1'),
    ('checkpoint.every_steps', 0, 'checkpoint.every_steps=0 is not allowed'),
    ('batch_size', 0, 'batch_size=0 is not allowed'),
    ('eval_every_epochs', 0, 'eval_every_epochs=0 is not allowed'),
    ('label_smoothing', 1.0, r'label_smoothing=1.0 is not allowed: use a number in \[0, 1\)'),
    ('augment.mix_prob', 1.5, 'augment.mix_prob=1.5'),
    ('patch_selection.keep', 0.0, 'patch_selection.keep=0.0'),
    ('optimizer.grad_clip_norm', -1.0, 'optimizer.grad_clip_norm=-1.0 is not allowed: use None'),
    ('schedule.warmup_epochs', 2, 'schedule.warmup_epochs=2 must be below epochs=2'),
    ('model.mask.kind', 'gauss', "model.mask.kind='gauss'"),
  ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, field, value, message):
  config = tiny_config(epochs=2)
  section, name = field.rsplit('.', 1) if '.' in field else ('', field)
  target = config
  for part in filter(None, section.split('.')):
    target = target[part]
  target[name] = value
  workdir = tmp_path / 'run'
  with pytest.raises(errors.ConfigError, match=message):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_patch_selection_on_a_full_grid_backbone_is_refused_at_once():
  from configs import swin_cifar10

  config = swin_cifar10.get_config()
  config.patch_selection = common.patch_selection('variance')
  with pytest.raises(errors.ConfigError, match="model.name='swin' cannot: use"):
    config_checks.check(config)
  config.patch_selection.mode = 'zero'  # Zeroing pixels needs no token dropping.
  config_checks.check(config)


def test_every_config_file_passes_the_checks():
  import importlib

  names = [
    f[:-3]
    for f in os.listdir(os.path.join(ROOT, 'configs'))
    if f.endswith('.py') and f not in ('common.py', '__init__.py')
  ]
  checked = 0
  for name in names:
    module = importlib.import_module(f'configs.{name}')
    if hasattr(module, 'get_config'):  # configs/tiny.py shrinks configs, it is none.
      config_checks.check(module.get_config())
      checked += 1
  assert checked >= 12


def test_every_field_left_none_can_be_set_from_the_command_line():
  """A None field is typed (config_dict.placeholder), or a flag cannot set it:
  --config.dataset.data_dir=DIR failed with a flags error before."""
  import ml_collections

  def untyped(config, prefix=''):
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from untyped(value, f'{prefix}{key}.')
      elif value is None and config.get_type(key) is type(None):
        yield f'{prefix}{key}'

  for dataset in common.DATASETS:
    assert list(untyped(common.paper_recipe(dataset))) == [], dataset


def _foreign_folders(root) -> dict[str, str]:
  """{case: workdir} of folders this trainer did not make, each holding what users have."""
  folders = {}
  for case, files in {
    'foreign_config': {
      'config.json': json.dumps({'architectures': ['BertModel'], 'hidden_size': 768})
    },
    'broken_config': {'config.json': '{"model": '},
    'unrelated': {'notes.txt': 'mine', 'photos/cat.jpg': 'jpeg'},
    'orphan_checkpoints': {'checkpoints/10/_CHECKPOINT_METADATA': '{}', 'lock': ''},
  }.items():
    for name, text in files.items():
      path = root / case / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text)
    folders[case] = str(root / case)
  return folders


def test_a_folder_this_trainer_did_not_write_is_refused_untouched(tmp_path):
  expected = {
    'foreign_config': 'config.json is not a config this trainer wrote (it has no model.name, '
    'dataset.name, epochs, batch_size, seed, checkpoint.every_steps)',
    'broken_config': 'config.json is not a config this trainer wrote (it is not a JSON object)',
    'unrelated': 'holds files this trainer did not write (notes.txt, photos) and no '
    'config.json of its own',
    'orphan_checkpoints': 'holds files this trainer did not write (checkpoints) and no '
    'config.json of its own',
  }
  for case, workdir in _foreign_folders(tmp_path).items():
    before = files_with_times(workdir), sorted(os.listdir(workdir))
    with pytest.raises(errors.UserError) as raised:
      loop.train_and_evaluate(tiny_config(epochs=1), workdir)
    assert expected[case] in str(raised.value), (case, str(raised.value))
    assert str(raised.value).endswith(
      'choose an empty or new --workdir; nothing in it was changed.'
    )
    assert (files_with_times(workdir), sorted(os.listdir(workdir))) == before, case


def test_a_workdir_that_is_a_file_or_under_one_is_refused(tmp_path):
  file = tmp_path / 'results.csv'
  file.write_text('a,b\n')
  for workdir, where in (
    (file, 'is a file'),
    (file / 'run', f'lies under {file}, which is a file'),
  ):
    with pytest.raises(
      errors.UserError,
      match=f'--workdir {workdir} {where}: choose a directory that does not exist yet',
    ):
      loop.train_and_evaluate(tiny_config(epochs=1), str(workdir))
  assert file.read_text() == 'a,b\n'


def test_empty_new_and_early_workdirs_are_taken(finished_run, tmp_path):
  """Absent, empty, holding only what a run writes before its config (a run killed while
  loading its data), or a real run directory with a user's notes beside: all go on."""
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'early').mkdir()
  (tmp_path / 'early' / 'lock').write_text('')
  (tmp_path / 'early' / '.DS_Store').write_text('')
  workdir = _copy(finished_run, tmp_path)
  with open(os.path.join(workdir, 'notes.txt'), 'w') as f:
    f.write('lr sweep, run 3')
  for path in ('new/run', 'empty', 'early', 'run'):
    RunDirectory(str(tmp_path / path)).check_is_ours()
  assert loop.train_and_evaluate(tiny_config(epochs=1), workdir)['completed']


def test_the_console_of_a_refused_workdir_is_one_line(tmp_path):
  workdir = _foreign_folders(tmp_path)['foreign_config']
  proc = subprocess.run(
    [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
    timeout=300,
  )
  assert proc.returncode == errors.EXIT_ERROR, proc.stderr[-3000:]
  assert proc.stdout == ''
  assert proc.stderr.strip().splitlines() == [
    f'error: {workdir}/config.json is not a config this trainer wrote (it has no model.name, '
    'dataset.name, epochs, batch_size, seed, checkpoint.every_steps): choose an empty or new '
    '--workdir; nothing in it was changed.'
  ], proc.stderr[-3000:]
  assert sorted(os.listdir(workdir)) == ['config.json']
