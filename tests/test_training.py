"""The trainer end to end on real data (sklearn digits): learning, checkpoints, resume,
SIGTERM, kill -9, NaN, several devices, bad configs."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import quickstart
from gmm_vit_jax import errors
from gmm_vit_jax.data.sampling import EpochSampler, eval_batches
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import Checkpointer, restore_model
from gmm_vit_jax.training.optimizer import learning_rate_schedule, make_optimizer
from tests.model_testing import QUICK_COMPILES_ENV
from tests.workdir_testing import restored_state

pytestmark = pytest.mark.usefixtures('quick_compiles')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(epochs=2):
  config = quickstart.get_config()
  config.model.update(dict(dim=16, depth=1, num_heads=2, head_dim=8))
  config.epochs = epochs
  config.schedule.warmup_epochs = 0
  config.optimizer.learning_rate = 3e-3
  config.log_every_steps = 10
  config.eval_every_epochs = 1
  config.checkpoint.every_steps = 10
  return config


def run_train(workdir, *overrides, env=None):
  cmd = [
    sys.executable,
    'train.py',
    '--config=tests/tiny_config.py',
    f'--workdir={workdir}',
    *overrides,
  ]
  return subprocess.Popen(
    cmd,
    cwd=ROOT,
    env={**os.environ, **QUICK_COMPILES_ENV, **(env or {})},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def test_learns_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path)
  first = loop.train_and_evaluate(tiny_config(epochs=2), workdir)
  assert first['completed'] and first['step'] == 2 * 22
  with open(os.path.join(workdir, 'summary.json')) as f:
    written = json.load(f)
  for key in ('eval_accuracy', 'eval_loss', 'step', 'train_wall_time_s'):
    assert key in written
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['dim'] == 16
  assert first['eval_accuracy'] > 0.2  # 10 classes on 360 images: chance is 0.10 +- 0.016.
  events = EventAccumulator(workdir)
  events.Reload()
  assert [e.step for e in events.Scalars('eval_accuracy')] == [22, 44]
  assert events.Scalars('eval_accuracy')[-1].value == pytest.approx(first['eval_accuracy'])
  assert 'gmm_masks' in events.Tags()['tensors'] + events.Tags()['images']
  for name in ('augmentation.png', 'gmm_masks.png', 'parameters.txt'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0

  second = loop.train_and_evaluate(tiny_config(epochs=4), workdir, allow_config_change=('epochs',))
  assert second['step'] == 4 * 22 and second['completed']
  assert second['eval_loss'] < first['eval_loss']
  model, config = restore_model(workdir, 'best')
  assert config.model.dim == 16 and model.blocks[0].attention.mask is not None


def _wait_for_checkpoint(proc, workdir, timeout=240):
  """Waits until the run has committed a checkpoint; fails if it ends without one."""
  checkpoints = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
      return
    if proc.poll() is not None:
      break
    time.sleep(0.05)
  raise AssertionError(f'no checkpoint in {timeout} s; output:\n{proc.communicate()[0][-3000:]}')


def _resumed_from(output: str) -> int:
  (line,) = [l for l in output.splitlines() if 'Resumed from the checkpoint at step' in l]
  return int(line.split('at step ')[1].split()[0])


def test_interrupted_runs_end_bit_identical_to_an_uninterrupted_one(tmp_path):
  """kill -9 and SIGTERM mid-run, then the same command again: on a CPU the result equals
  one uninterrupted run to the bit, and each rerun continued from its last checkpoint."""
  args = ('--config.epochs=5',)
  total = 5 * 22
  dirs = {name: str(tmp_path / name) for name in ('whole', 'killed', 'stopped')}
  # The uninterrupted run first: by its first checkpoint its compiled step is in the test
  # run's compilation cache (conftest.py), which the other two then read.
  runs = {'whole': run_train(dirs['whole'], *args)}
  _wait_for_checkpoint(runs['whole'], dirs['whole'])
  runs.update({name: run_train(dirs[name], *args) for name in ('killed', 'stopped')})
  for name, signum in (('killed', signal.SIGKILL), ('stopped', signal.SIGTERM)):
    _wait_for_checkpoint(runs[name], dirs[name])
    runs[name].send_signal(signum)
  outputs = {name: proc.communicate(timeout=600)[0] for name, proc in runs.items()}
  assert runs['whole'].returncode == 0, outputs['whole'][-3000:]
  # A quiet console: no TensorFlow or backend-probe notices, a count for the table.
  assert 'oneDNN' not in outputs['whole'], outputs['whole'][:3000]
  assert 'Unable to initialize backend' not in outputs['whole'], outputs['whole'][:3000]
  assert 'parameters (table in' in outputs['whole']
  assert f'eval  epoch 5/5  step {total}/{total}  test ' in outputs['whole']
  assert f'Done at step {total}/{total}: test ' in outputs['whole']
  # Every console line is a log record in the short form: the time, two spaces, the text.
  assert all(re.match(r'\d\d:\d\d:\d\d  ', line) for line in outputs['whole'].splitlines())
  assert runs['killed'].returncode == -signal.SIGKILL
  assert runs['stopped'].returncode == errors.EXIT_STOPPED, outputs['stopped'][-3000:]
  assert 'SIGTERM received' in outputs['stopped']
  stopped = json.load(open(os.path.join(dirs['stopped'], 'summary.json')))
  assert not stopped['completed'] and 0 < stopped['step'] < total
  lock = json.load(open(os.path.join(dirs['killed'], 'lock')))
  assert lock['pid'] == runs['killed'].pid  # A dead holder's lock stays behind ...

  saved = {}
  for name in ('killed', 'stopped'):
    checker = Checkpointer(dirs[name], tiny_config().checkpoint)
    saved[name] = checker.latest_step()
    checker.close()
  assert saved['stopped'] == stopped['step']
  reruns = {name: run_train(dirs[name], *args) for name in ('killed', 'stopped')}
  for name, proc in reruns.items():
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert 0 < saved[name] < total and _resumed_from(out) == saved[name]
    if name == 'killed':  # ... and is taken over.
      assert f'Took over the lock of process {runs["killed"].pid}' in out

  whole = json.load(open(os.path.join(dirs['whole'], 'summary.json')))
  expected = restored_state(dirs['whole'], total)
  for name in ('killed', 'stopped'):
    summary = json.load(open(os.path.join(dirs[name], 'summary.json')))
    assert summary['completed'] and summary['step'] == total
    for key in ('eval_accuracy', 'eval_loss', 'best_eval_accuracy', 'best_step'):
      assert summary[key] == whole[key], (name, key)
    for (path, want), (_, got) in zip(expected, restored_state(dirs[name], total)):
      np.testing.assert_array_equal(got, want, err_msg=f'{name} {path}')


def test_a_second_run_on_a_busy_workdir_refuses_at_once(tmp_path):
  workdir = str(tmp_path)
  first = run_train(workdir, '--config.epochs=400')
  _wait_for_checkpoint(first, workdir)
  second = run_train(workdir, '--config.epochs=400', '--config.seed=1')
  out, _ = second.communicate(timeout=300)
  assert second.returncode == errors.EXIT_ERROR, out[-3000:]
  assert out.strip().splitlines()[-1] == (
    f'error: {workdir} is in use by process {first.pid} on {socket.gethostname()} (since '
    f'{json.load(open(os.path.join(workdir, "lock")))["since"]}): wait for it to end or stop '
    'it, or choose another --workdir.'
  )
  assert 'Traceback' not in out
  first.send_signal(signal.SIGTERM)
  first_out, _ = first.communicate(timeout=300)
  assert first.returncode == errors.EXIT_STOPPED, first_out[-3000:]
  assert json.load(open(os.path.join(workdir, 'config.json')))['seed'] == 0
  assert len([f for f in os.listdir(workdir) if f.startswith('events')]) == 1


@contextlib.contextmanager
def _tmpfs(path, size: str, read_only: bool = False):
  """A small file system at `path`: the real ENOSPC and EROFS a user's disk gives."""
  os.makedirs(path)
  options = f'size={size}' + (',ro' if read_only else '')
  mounted = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True, text=True
  )
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', '-l', str(path)], check=True)


def test_a_full_disk_stops_with_one_line_and_loses_nothing(tmp_path):
  with _tmpfs(tmp_path / 'disk', '2m') as disk:
    # Leave room for the config, the first pictures and a few checkpoints, not a whole run.
    with open(os.path.join(disk, 'filler'), 'wb') as f:
      f.write(b'\0' * (2 * 2**20 - 600 * 2**10))
    workdir = os.path.join(disk, 'run')
    proc = run_train(workdir, '--config.epochs=12', '--config.checkpoint.keep_last=100')
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == errors.EXIT_ERROR, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f'error: No space left on device: {workdir}'), out[-3000:]
    assert last.endswith('(free some space there or choose another --workdir).')
    assert 'Traceback' not in out and sum(l.startswith('error:') for l in out.splitlines()) == 1
    checker = Checkpointer(workdir, tiny_config().checkpoint)
    saved = checker.latest_step()
    checker.close()
    assert saved is not None and saved < 12 * 22
    os.remove(os.path.join(disk, 'filler'))
    # Keeping fewer checkpoints, saving and evaluating less often: changes the stored
    # config lets through.
    rerun = run_train(
      workdir,
      '--config.epochs=12',
      '--config.checkpoint.keep_last=3',
      '--config.checkpoint.every_steps=100',
      '--config.eval_every_epochs=6',
    )
    out, _ = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, out[-3000:]
  assert _resumed_from(out) == saved


def test_a_disk_full_at_the_final_save_is_an_error_never_a_success(tmp_path):
  """The only checkpoint is the final one, and it does not fit: exit 1 with one line, no
  'Done', no completed summary; with room again, a rerun trains and completes."""
  args = (
    '--config.epochs=1',
    '--config.checkpoint.every_steps=1000',
    '--config.eval_every_epochs=1000',
  )
  with _tmpfs(tmp_path / 'disk', '1m') as disk:
    # Room for the config, pictures and logs (about 100 KiB), not the checkpoint (200 KiB).
    with open(os.path.join(disk, 'filler'), 'wb') as f:
      f.write(b'\0' * (2**20 - 200 * 2**10))
    workdir = os.path.join(disk, 'run')
    proc = run_train(workdir, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == errors.EXIT_ERROR, out[-3000:]
    assert 'Done at step' not in out and 'Traceback' not in out, out[-3000:]
    errors_printed = [l for l in out.splitlines() if l.startswith('error:')]
    assert errors_printed == [out.strip().splitlines()[-1]], out[-3000:]
    assert errors_printed[0].startswith(f'error: No space left on device: {workdir}')
    summary = os.path.join(workdir, 'summary.json')
    assert not os.path.exists(summary) or not json.load(open(summary))['completed']
    assert os.path.exists(os.path.join(workdir, 'config.json'))  # It did get that far.
    os.remove(os.path.join(disk, 'filler'))
    config = tiny_config(epochs=1)
    config.checkpoint.every_steps, config.eval_every_epochs = 1000, 1000
    assert loop.train_and_evaluate(config, workdir)['completed']
    assert json.load(open(summary))['completed']


def test_a_read_only_workdir_says_so_in_one_line(tmp_path):
  with _tmpfs(tmp_path / 'ro', '1m', read_only=True) as disk:
    workdir = os.path.join(disk, 'run')
    proc = run_train(workdir)
    out, _ = proc.communicate(timeout=300)
  assert proc.returncode == errors.EXIT_ERROR
  assert out.strip().splitlines()[-1] == (
    f'error: Read-only file system: {workdir!r} (choose a directory on a writable file '
    'system).'.replace(repr(workdir), workdir)
  )
  assert 'Traceback' not in out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  good = Checkpointer(workdir, tiny_config().checkpoint)
  last_good = good.latest_step()
  good.close()
  config = tiny_config(epochs=3)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(errors.NonFiniteError, match='NaN'):
    loop.train_and_evaluate(
      config, workdir, allow_config_change=('epochs', 'optimizer.learning_rate')
    )
  after = Checkpointer(workdir, config.checkpoint)
  assert after.latest_step() == last_good
  after.close()


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_1(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_train(str(workdir), '--config.epochs=0')
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == errors.EXIT_ERROR
  assert out.strip().splitlines()[-1] == (
    'error: epochs=0 is not allowed: use a whole number >= 1.'
  )
  assert 'Traceback' not in out and not workdir.exists()


def test_batch_must_divide_by_the_devices(tmp_path):
  proc = run_train(
    str(tmp_path),
    '--config.batch_size=60',
    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
  )
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0
  assert 'batch_size=60 does not divide by the 8 devices' in out


@pytest.mark.parametrize(
  'field,value',
  [('dataset.name', 'imagenet21k'), ('model.name', 'resnet'), ('model.mask.mode', 'mul')],
)
def test_bad_config_values_name_the_field(tmp_path, field, value):
  config = tiny_config()
  section, name = field.rsplit('.', 1)
  target = config
  for part in section.split('.'):
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError, match=field):
    loop.train_and_evaluate(config, str(tmp_path))


def test_sampler_epochs_are_repeated_passes_and_reproducible():
  sampler = EpochSampler(100, 32, passes=3, seed=7)
  assert sampler.steps_per_epoch == 9
  epoch = np.concatenate([sampler.batch(s) for s in range(9)])
  counts = np.bincount(epoch, minlength=100)
  assert counts.max() <= 3 and counts.sum() == 9 * 32
  again = EpochSampler(100, 32, passes=3, seed=7)
  np.testing.assert_array_equal(again.batch(13), sampler.batch(13))
  assert not np.array_equal(sampler.batch(0), sampler.batch(9))


def test_eval_batches_cover_every_row_once():
  seen = np.zeros(23)
  for index, weight in eval_batches(23, 8):
    assert index.shape == weight.shape == (8,)
    np.add.at(seen, index, weight)
  np.testing.assert_array_equal(seen, 1)


@pytest.mark.parametrize('warmup_epochs', [2, 0])
def test_schedule_is_linear_warmup_then_cosine(warmup_epochs, caplog):
  caplog.set_level('INFO')
  config = tiny_config(epochs=10)
  config.schedule.warmup_epochs = warmup_epochs
  config.schedule.end_learning_rate = 1e-6
  steps_per_epoch = 5
  schedule = learning_rate_schedule(config, steps_per_epoch)
  peak, low = config.optimizer.learning_rate, config.schedule.init_learning_rate
  end, warmup = config.schedule.end_learning_rate, warmup_epochs * steps_per_epoch
  for step in range(50):
    if step < warmup:
      expected = low + (peak - low) * step / warmup
    else:
      expected = end + 0.5 * (peak - end) * (1 + np.cos(np.pi * (step - warmup) / (50 - warmup)))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
  assert 'transition_steps' not in caplog.text  # optax's notice about an empty warmup.


@pytest.mark.parametrize('decay_mask_params', [True, False])
def test_weight_decay_of_the_mask_is_a_switch(decay_mask_params):
  config = tiny_config()
  config.optimizer.decay_mask_params = decay_mask_params
  config.schedule.init_learning_rate = config.optimizer.learning_rate
  tx = make_optimizer(config, 1)
  params = {'mask': {'sigma': np.ones(3, np.float32)}, 'kernel': np.ones(3, np.float32)}
  zero = {'mask': {'sigma': np.zeros(3, np.float32)}, 'kernel': np.zeros(3, np.float32)}
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert new['kernel'][0] < 1.0
  assert (new['mask']['sigma'][0] < 1.0) == decay_mask_params


def test_patch_selection_trains_and_really_drops_tokens(tmp_path):
  from configs import common

  config = tiny_config(epochs=1)
  config.model.attention = common.attention('mixture_of_keys')
  config.patch_selection = common.patch_selection('variance', keep=0.5, probability=1.0)
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary['completed'] and np.isfinite(summary['eval_loss'])
  assert os.path.exists(os.path.join(str(tmp_path), 'kept_patches.png'))
  assert all(loop._selects_patches(config, s, 22) for s in range(5))
  config.patch_selection.probability = 0.5
  draws = [loop._selects_patches(config, s, 22) for s in range(200)]
  assert 70 < sum(draws) < 130
  assert draws == [loop._selects_patches(config, s, 22) for s in range(200)]


def test_selected_steps_compute_less():
  from flax import nnx

  from configs import common
  from gmm_vit_jax import sharding
  from gmm_vit_jax.data.info import dataset_info
  from gmm_vit_jax.models import build_from_config
  from gmm_vit_jax.training.state import Metrics, TrainState
  from gmm_vit_jax.training.step import make_train_step

  config = tiny_config()
  config.model.update(dict(depth=2, patch_size=1))  # 64 tokens: attention cost shows.
  config.patch_selection = common.patch_selection('variance', keep=0.5, probability=1.0)
  # One core for both: on a CPU 'auto' would run the 32 kept tokens materialised and all
  # 64 in blockwise slices, whose recomputation the count includes.
  config.model.attention.implementation = 'xla'
  info = dataset_info('digits')
  tx = make_optimizer(config, 10)
  graphdef, params, buffers = nnx.split(build_from_config(config), nnx.Param, ...)
  params, buffers = nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)
  state = TrainState(step=np.int32(0), params=params, buffers=buffers, opt_state=tx.init(params))
  step = make_train_step(
    graphdef, tx, config, info, out_sharding=sharding.replicated(sharding.make_mesh())
  )
  images = np.zeros((100, 8, 8, 1), np.uint8)
  labels = np.zeros(100, np.int32)
  index = np.arange(64, dtype=np.int32)
  flops = {
    select: step.lower(state, Metrics.zeros(), images, labels, index, select).cost_analysis()[
      'flops'
    ]
    for select in (False, True)
  }
  assert flops[True] < 0.6 * flops[False], flops


def test_profile_option_writes_a_trace(tmp_path):
  config = tiny_config(epochs=1)
  config.profile_steps = 2
  config.profile_start_step = 3
  loop.train_and_evaluate(config, str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / 'profile') for f in files]
  assert any(f.endswith(('.xplane.pb', '.trace.json.gz')) for f in traces), traces
