"""Image folders and tfds:NAME datasets: the digits written as PNG files train like the
quick start, export carries the class names and predict prints them; both pipelines read
a folder alike; every bad folder is one line naming the folder or file."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import quickstart
from gmm_vit_jax import sharding
from gmm_vit_jax.data import image_folder, images, pipeline as pipelines, records, sources
from gmm_vit_jax.data.info import dataset_info, resolve
from gmm_vit_jax.training.checkpoint import selection_metric
from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_digits_folder(root) -> None:
  """The quick start's digits split as root/{train,test}/<digit>/<i>.png, 16x16 (each pixel
  of the 8x8 digit a 2x2 block)."""
  for split in ('train', 'test'):
    digits, labels = sources.load_split('digits', split, data_dir=None, download=False)
    for i, (digit, label) in enumerate(zip(digits, labels)):
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(np.kron(digit[..., 0], np.ones((2, 2), np.uint8))).save(
        os.path.join(folder, f'{i:04d}.png')
      )


def run(*args, env=None):
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **(env or {})},
  )


def test_digits_folder_trains_like_the_quickstart_and_predict_names_classes(tmp_path):
  data, workdir, bundle = (str(tmp_path / name) for name in ('digits', 'run', 'bundle'))
  write_digits_folder(data)
  # The quick start's command, in 24 of its 60 epochs.
  trained = run(
    'train.py',
    '--config=configs/quickstart.py',
    '--config.dataset.name=image_folder',
    f'--config.dataset.data_dir={data}',
    '--config.dataset.image_size=8',
    '--config.epochs=24',
    '--config.eval_every_epochs=12',
    f'--workdir={workdir}',
  )
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['best_eval_accuracy'] >= 0.95
  with open(os.path.join(workdir, 'config.json')) as f:
    stored = json.load(f)['dataset']
  assert stored['class_names'] == [str(d) for d in range(10)]
  assert stored['image_size'] == 8 and stored['channels'] == 3 and stored['background'] == 'dark'

  exported = run('-m', 'gmm_vit_jax.export', f'--workdir={workdir}', f'--out={bundle}')
  assert exported.returncode == 0, exported.stderr[-3000:]
  with open(os.path.join(bundle, 'preprocess.json')) as f:
    preprocess = json.load(f)
  assert preprocess['class_names'] == stored['class_names']
  assert preprocess['preprocessing'] == images.PREPROCESSING
  seven = os.path.join(data, 'test', '7', sorted(os.listdir(os.path.join(data, 'test', '7')))[0])
  paper = str(tmp_path / 'paper.png')  # The same digit, dark ink on white paper.
  Image.fromarray(255 - np.asarray(Image.open(seven))).save(paper)
  predicted = run('-m', 'gmm_vit_jax.predict', f'--export={bundle}', seven, paper)
  assert predicted.returncode == 0, predicted.stderr
  lines = predicted.stdout.splitlines()
  assert lines[0] == seven and lines[1].startswith('  1. 7 (7)')
  hints = [line for line in predicted.stderr.splitlines() if 'try --invert' in line]
  assert hints == [
    f'{paper}: its background is light, but the model learned dark backgrounds: try --invert.'
  ]


def save(path, pixels, **options) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, **options)


def mixed_folder(root, validation='val') -> dict:
  """Two classes of PNG, JPEG, 16-bit and RGBA files of several sizes in train, test and
  a validation folder; returns {path: expected uint8 (6, 6, 3)}, computed with NumPy."""
  rng = np.random.default_rng(1)
  expected = {}
  for split in ('train', 'test', validation):
    for name in ('cat', 'dog'):
      for i, shape in enumerate([(12, 18, 3), (6, 6, 3), (24, 12), (12, 12, 4)] * 2):
        base = os.path.join(root, split, name, f'{i}')
        if len(shape) == 2:
          pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
          unit = np.repeat(pixels[..., None] / 65535, 3, -1)
          path = base + '.png'
        elif shape[-1] == 4:
          pixels = rng.integers(0, 256, shape, dtype=np.uint8)
          rgba = pixels / 255
          unit = rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]
          path = base + '.png'
        else:
          pixels = rng.integers(0, 256, shape, dtype=np.uint8)
          path = base + ('.jpg' if i % 2 else '.bmp')
        save(path, pixels, **({'quality': 95} if path.endswith('.jpg') else {}))
        if shape == (12, 18, 3) or shape == (6, 6, 3):
          unit = np.asarray(Image.open(path).convert('RGB')) / 255
        h, w = unit.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = unit[top : top + side, left : left + side]
        k = side // 6  # Every side here is a multiple of 6: area means are block means.
        blocks = square.reshape(6, k, 6, k, 3).mean(axis=(1, 3))
        expected[path] = np.round(blocks * 255).astype(np.uint8)
  return expected


def folder_config(data_dir, pipeline='device'):
  config = quickstart.get_config()
  config.dataset.update(
    dict(
      name='image_folder', data_dir=str(data_dir), image_size=6, pipeline=pipeline, grain_threads=2
    )
  )
  config.batch_size, config.eval_batch_size = 4, 6
  return config


def test_both_pipelines_read_a_mixed_folder_as_numpy_says(tmp_path):
  expected = mixed_folder(str(tmp_path))
  config = resolve(folder_config(tmp_path))
  assert config.dataset.validation_split == 'val' and selection_metric(config) == 'val_accuracy'
  assert tuple(config.dataset.class_names) == ('cat', 'dog')
  for split in ('train', 'test', 'validation'):
    found = records.open_records(config.dataset, split)
    folder = 'val' if split == 'validation' else split
    assert all(f'/{folder}/' in path for path in found.paths)
    for i, path in enumerate(found.paths):
      image, label = found[i]
      assert label == ('/dog/' in path)
      assert np.abs(image.astype(int) - expected[path]).max() <= 1, path
  mesh = sharding.make_mesh()
  config.dataset.pipeline = 'auto'  # 48 images of 6x6x3 fit: resident.
  device = pipelines.make_pipeline(config, mesh)
  assert isinstance(device, pipelines.DevicePipeline)
  config.dataset.pipeline = 'grain'
  grain = pipelines.make_pipeline(config, mesh)
  assert device.eval_splits == grain.eval_splits == ('test', 'validation')
  for split in device.eval_splits:
    for a, b in zip(device.eval_batches(split), grain.eval_batches(split)):
      index = np.asarray(a[2])
      np.testing.assert_array_equal(np.asarray(a[0])[index], np.asarray(b[0]))


def test_a_resolved_config_needs_the_folder_no_more(tmp_path):
  for split in ('train', 'test'):
    for name, value in (('b', 30), ('a', 220)):
      tiny_png(str(tmp_path / 'data' / split / name / '0.png'), value)
  config = resolve(folder_config(tmp_path / 'data'))
  info = dataset_info(config.dataset)
  assert info['class_names'] == ('a', 'b') and info['channels'] == 3
  np.testing.assert_allclose(info['mean'], [(30 + 220) / 2 / 255] * 3, atol=1e-4)
  shutil.rmtree(tmp_path / 'data')
  assert dataset_info(config.dataset) == info


def test_tfds_dataset_by_name_reads_its_features_from_the_builder():
  config = quickstart.get_config()
  config.dataset.name = 'tfds:mnist'
  config.batch_size, config.eval_batch_size = 4, 8
  with tfds.testing.mock_data(num_examples=16):
    info = dataset_info(config.dataset)
    assert info['class_names'] == tuple(str(d) for d in range(10))
    assert (info['image_size'], info['channels'], info['num_classes']) == (28, 1, 10)
    config = resolve(config)
    mesh = sharding.make_mesh()
    # tfds's mock examples differ between tf.data and data_source: shapes only.
    for pipeline in ('device', 'grain'):
      config.dataset.pipeline = pipeline
      made = pipelines.make_pipeline(config, mesh)
      assert made.examples('train', 3).shape == (3, 28, 28, 1)
      labels = np.asarray(next(made.eval_batches('test'))[1])
      assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10


def tiny_png(path, value=100):
  save(path, np.full((4, 4), value, np.uint8))


def missing_test(root):
  tiny_png(os.path.join(root, 'train', 'a', '0.png'))


def empty_class(root):
  for split in ('train', 'test'):
    tiny_png(os.path.join(root, split, 'a', '0.png'))
  os.makedirs(os.path.join(root, 'train', 'b'))
  with open(os.path.join(root, 'train', 'b', 'notes.txt'), 'w') as f:
    f.write('no images here')


def different_classes(root):
  for split, name in (('train', 'a'), ('train', 'b'), ('test', 'a'), ('test', 'c')):
    tiny_png(os.path.join(root, split, name, '0.png'))


def loose_image(root):
  for split in ('train', 'test'):
    tiny_png(os.path.join(root, split, 'a', '0.png'))
  tiny_png(os.path.join(root, 'train', 'stray.png'))


def unreadable(root):
  for split in ('train', 'test'):
    tiny_png(os.path.join(root, split, 'a', '0.png'))
  with open(os.path.join(root, 'test', 'a', 'broken.jpg'), 'w') as f:
    f.write('not a jpeg')


def animated(root):
  for split in ('train', 'test'):
    tiny_png(os.path.join(root, split, 'a', '0.png'))
  frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 200)]
  frames[0].save(
    os.path.join(root, 'train', 'a', 'moving.gif'), save_all=True, append_images=frames[1:]
  )


BAD_FOLDERS = [
  (
    missing_test,
    r'test is missing: an image folder holds train/<class>/ and test/<class>/ '
    r'folders \(found: train/\)',
  ),
  (empty_class, r'train/b holds no images \(an empty class\)'),
  (
    different_classes,
    r'test and .*train have different classes: it lacks \[.b.\]; train/ '
    r'lacks \[.c.\]',
  ),
  (loose_image, r'train/stray.png lies outside a class folder'),
  (unreadable, r'test/a/broken.jpg cannot be used as an image: not an image file PIL can read'),
  (animated, r'train/a/moving.gif cannot be used as an image: it holds 2 frames'),
]


@pytest.mark.parametrize('make,message', BAD_FOLDERS, ids=[m.__name__ for m, _ in BAD_FOLDERS])
def test_each_bad_folder_is_one_error_naming_it(tmp_path, make, message):
  make(str(tmp_path))
  config = folder_config(tmp_path)
  with pytest.raises((image_folder.ImageFolderError, images.ImageError), match=message) as e:
    config = resolve(config)
    pipelines.make_pipeline(config, sharding.make_mesh())
  assert '\n' not in str(e.value)


def test_a_bad_folder_ends_train_py_in_one_line(tmp_path):
  empty_class(str(tmp_path / 'data'))
  result = run(
    'train.py',
    '--config=configs/quickstart.py',
    '--config.dataset.name=image_folder',
    f'--config.dataset.data_dir={tmp_path / "data"}',
    '--config.dataset.image_size=8',
    f'--workdir={tmp_path / "run"}',
    env=QUICK_COMPILES_ENV,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
    f'error: {tmp_path}/data/train/b holds no images (an empty class): add images with one '
    f'of the endings {", ".join(images.IMAGE_EXTENSIONS)}, or remove it.'
  )
  assert 'Traceback' not in result.stderr


def test_missing_data_dir_and_image_size_name_the_fields(tmp_path):
  config = folder_config(tmp_path)
  config.dataset.data_dir = None
  with pytest.raises(image_folder.ImageFolderError, match='--config.dataset.data_dir=DIR'):
    dataset_info(config.dataset)
  for split in ('train', 'test'):
    tiny_png(str(tmp_path / split / 'a' / '0.png'))
  config = folder_config(tmp_path)
  config.dataset.image_size = None
  with pytest.raises(ValueError, match='--config.dataset.image_size=S'):
    dataset_info(config.dataset)


def test_files_that_are_not_images_by_name_are_skipped_and_counted(tmp_path, caplog):
  for split in ('train', 'test'):
    tiny_png(str(tmp_path / split / 'a' / '0.png'))
  (tmp_path / 'train' / 'a' / 'README.txt').write_text('about the cats')
  (tmp_path / 'train' / 'a' / '.DS_Store').write_text('')
  with caplog.at_level('WARNING'):
    found = image_folder.scan(str(tmp_path), None)
  assert len(found.files['train']) == 1
  assert 'skipped 1 files that are not images by their name' in caplog.text
