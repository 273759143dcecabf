"""The input pipelines: 'device' and 'grain' give the same batches for the same seed, grain's
stream is a pure function of the step (a resumed run sees the same batches and losses), and
'auto' chooses by size."""

import numpy as np
import pytest

from gmm_vit_jax import sharding
from gmm_vit_jax.data import pipeline as pipelines, records
from gmm_vit_jax.training import loop
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')


def both(config):
  mesh = sharding.make_mesh()
  config.dataset.pipeline = 'device'
  device = pipelines.make_pipeline(config, mesh)
  config.dataset.pipeline = 'grain'
  grain = pipelines.make_pipeline(config, mesh)
  return device, grain


def gathered(images, labels, index):
  images, labels = np.asarray(images), np.asarray(labels)
  return (
    (images, labels) if index is None else (images[np.asarray(index)], labels[np.asarray(index)])
  )


@pytest.mark.parametrize('validation', [None, 0.25])
def test_device_and_grain_give_the_same_batches(validation):
  config = tiny_config()
  config.dataset.validation = validation
  device, grain = both(config)
  assert isinstance(device, pipelines.DevicePipeline)
  assert isinstance(grain, pipelines.GrainPipeline)
  assert device.steps_per_epoch == grain.steps_per_epoch
  assert device.eval_splits == grain.eval_splits
  # Across the end of the first epoch.
  start, stop = device.steps_per_epoch - 2, device.steps_per_epoch + 2
  for a, b in zip(device.train_batches(start, stop), grain.train_batches(start, stop)):
    (ai, al), (bi, bl) = gathered(*a), gathered(*b)
    assert bi.shape == (config.batch_size, 8, 8, 1)
    np.testing.assert_array_equal(ai, bi)
    np.testing.assert_array_equal(al, bl)
  for split in device.eval_splits:
    count = 0
    for a, b in zip(device.eval_batches(split), grain.eval_batches(split)):
      np.testing.assert_array_equal(gathered(*a[:3])[0], gathered(*b[:3])[0])
      np.testing.assert_array_equal(np.asarray(a[3]), np.asarray(b[3]))
      count += 1
    assert count == len(list(grain.eval_batches(split))) > 0
  np.testing.assert_array_equal(device.examples('train', 5), grain.examples('train', 5))


def test_grain_batches_are_a_function_of_the_step():
  config = tiny_config()
  config.dataset.pipeline = 'grain'
  grain = pipelines.make_pipeline(config, sharding.make_mesh())
  whole = [np.asarray(b[0]) for b in grain.train_batches(0, 30)]
  resumed = [np.asarray(b[0]) for b in grain.train_batches(17, 30)]
  for a, b in zip(whole[17:], resumed):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(whole[0], whole[grain.steps_per_epoch])


def test_grain_run_stopped_and_resumed_gives_the_uninterrupted_losses(tmp_path, monkeypatch):
  config = tiny_config(epochs=1)
  config.dataset.pipeline = 'grain'
  whole = loop.train_and_evaluate(config, str(tmp_path / 'whole'))
  # A stop request (what SIGTERM makes) before step 7: the loop saves and returns.
  monkeypatch.setattr(loop._StopRequest, 'check', lambda self, step: step == 7)
  stopped = loop.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert stopped['step'] == 7 and not stopped['completed']
  monkeypatch.undo()
  resumed = loop.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['completed']
  np.testing.assert_allclose(resumed['eval_loss'], whole['eval_loss'], rtol=1e-5)
  assert resumed['eval_accuracy'] == whole['eval_accuracy']


def test_auto_keeps_what_fits_resident(monkeypatch):
  config = tiny_config()
  config.dataset.pipeline = 'auto'
  mesh = sharding.make_mesh()
  size = 1797 * 8 * 8  # Both digits splits as uint8.
  monkeypatch.setattr(pipelines, 'device_memory_bytes', lambda: 4 * size)
  config.dataset.resident_share = 0.5
  assert isinstance(pipelines.make_pipeline(config, mesh), pipelines.DevicePipeline)
  config.dataset.resident_share = 0.2
  assert isinstance(pipelines.make_pipeline(config, mesh), pipelines.GrainPipeline)
  config.dataset.pipeline = 'stream'
  with pytest.raises(ValueError, match='dataset.pipeline'):
    pipelines.make_pipeline(config, mesh)


def test_fit_image_resizes_the_shorter_side_and_crops_the_centre():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 30:50] = 255  # A bright band in the middle of the wide image.
  out = records.fit_image(image, 20, 3)
  assert out.shape == (20, 20, 3)
  # 40x80 -> 20x40, whose band is columns 15..24; the centre crop keeps 10..29, so the
  # band lands on 5..14.
  assert out[:, :3].max() <= 40 and out[:, 17:].max() <= 40 and out[:, 7:12].min() >= 200
  grey = records.fit_image(np.full((20, 20), 7, np.uint8), 20, 3)
  assert grey.shape == (20, 20, 3) and (grey == 7).all()
