"""The trainer end to end on real data (sklearn digits): learning, checkpoints, resume,
SIGTERM, kill -9, NaN, several devices, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import quickstart
from gmm_vit_jax.data.sampling import EpochSampler, eval_batches
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import Checkpointer, restore_model
from gmm_vit_jax.training.optimizer import learning_rate_schedule, make_optimizer

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
  cmd = [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}',
         *overrides]
  return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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

  second = loop.train_and_evaluate(tiny_config(epochs=4), workdir)
  assert second['step'] == 4 * 22 and second['completed']
  assert second['eval_loss'] < first['eval_loss']
  model, config = restore_model(workdir, 'best')
  assert config.model.dim == 16 and model.blocks[0].attention.mask is not None


def test_kill_9_then_rerun_finishes(tmp_path):
  workdir = str(tmp_path)
  proc = run_train(workdir, '--config.epochs=6')
  checkpoints = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + 240
  while time.time() < deadline:
    steps = [d for d in os.listdir(checkpoints)] if os.path.isdir(checkpoints) else []
    if any(d.isdigit() for d in steps):
      break
    time.sleep(0.5)
  proc.kill()
  proc.wait()
  killed_at = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  assert 0 < killed_at < 6 * 22
  rerun = run_train(workdir, '--config.epochs=6')
  out, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, out[-3000:]
  assert 'Resumed from the checkpoint at step' in out
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['completed'] and summary['step'] == 6 * 22


def test_sigterm_saves_and_stops(tmp_path):
  workdir = str(tmp_path)
  proc = run_train(workdir, '--config.epochs=200', '--config.checkpoint.every_steps=100000')
  deadline = time.time() + 240
  tb = os.path.join(workdir)
  while time.time() < deadline and not any(f.startswith('events') for f in os.listdir(tb)):
    time.sleep(0.5)
  time.sleep(3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGTERM received' in out
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert not summary['completed']
  saved = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert summary['step'] in saved


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  good = Checkpointer(workdir, tiny_config().checkpoint)
  last_good = good.latest_step()
  good.close()
  config = tiny_config(epochs=3)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(loop.NonFiniteLossError, match='NaN'):
    loop.train_and_evaluate(config, workdir)
  after = Checkpointer(workdir, config.checkpoint)
  assert after.latest_step() == last_good
  after.close()


def test_eight_devices_give_the_one_device_result(tmp_path):
  # The one-device run in this process; the eight need a process of their own (XLA_FLAGS).
  one = loop.train_and_evaluate(tiny_config(epochs=1), str(tmp_path / '1'))
  assert one['devices'] == 1
  workdir = str(tmp_path / '8')
  proc = run_train(workdir, '--config.epochs=1',
                   env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  # A quiet console: no TensorFlow or backend-probe notices, a count for the table.
  assert 'oneDNN' not in out and 'Unable to initialize backend' not in out, out[:3000]
  assert 'parameters (table in' in out and 'eval  epoch 1/1  step 22/22  accuracy' in out
  eight = json.load(open(os.path.join(workdir, 'summary.json')))
  assert eight['devices'] == 8
  np.testing.assert_allclose(one['eval_loss'], eight['eval_loss'], rtol=1e-4)
  assert one['eval_accuracy'] == eight['eval_accuracy']


def test_batch_must_divide_by_the_devices(tmp_path):
  proc = run_train(str(tmp_path), '--config.batch_size=60',
                   env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode != 0
  assert 'batch_size=60 does not divide by the 8 devices' in out


@pytest.mark.parametrize('field,value', [
    ('dataset.name', 'imagenet21k'), ('model.name', 'resnet'), ('model.mask.mode', 'mul')])
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


def test_schedule_is_linear_warmup_then_cosine():
  config = tiny_config(epochs=10)
  config.schedule.warmup_epochs = 2
  steps_per_epoch = 5
  schedule = learning_rate_schedule(config, steps_per_epoch)
  peak, low = config.optimizer.learning_rate, config.schedule.init_learning_rate
  for step in range(50):
    if step <= 10:
      expected = low + (peak - low) * step / 10
    else:
      expected = low + 0.5 * (peak - low) * (1 + np.cos(np.pi * (step - 10) / 40))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


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
  from configs import common
  from gmm_vit_jax.data.info import dataset_info
  from gmm_vit_jax.training import sharding
  from gmm_vit_jax.models import build_from_config
  from gmm_vit_jax.training.state import Metrics, TrainState
  from gmm_vit_jax.training.step import make_train_step
  from flax import nnx
  config = tiny_config()
  config.model.update(dict(depth=2, patch_size=1))  # 64 tokens: attention cost shows.
  config.patch_selection = common.patch_selection('variance', keep=0.5, probability=1.0)
  info = dataset_info('digits')
  tx = make_optimizer(config, 10)
  graphdef, params, buffers = nnx.split(build_from_config(config), nnx.Param, ...)
  params, buffers = nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)
  state = TrainState(step=np.int32(0), params=params, buffers=buffers, opt_state=tx.init(params))
  step = make_train_step(graphdef, tx, config, info,
                         out_sharding=sharding.replicated(sharding.make_mesh()))
  images = np.zeros((100, 8, 8, 1), np.uint8)
  labels = np.zeros(100, np.int32)
  index = np.arange(64, dtype=np.int32)
  flops = {select: step.lower(state, Metrics.zeros(), images, labels, index, select)
           .compile().cost_analysis()['flops'] for select in (False, True)}
  assert flops[True] < 0.6 * flops[False]


def test_profile_option_writes_a_trace(tmp_path):
  config = tiny_config(epochs=1)
  config.profile_steps = 2
  config.profile_start_step = 3
  loop.train_and_evaluate(config, str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / 'profile') for f in files]
  assert any(f.endswith(('.xplane.pb', '.trace.json.gz')) for f in traces), traces
