"""Tiny-ImageNet reader on a small generated folder with the download's layout."""

import os

import numpy as np
import pytest
from PIL import Image

from configs import gmm_vit_cifar10
from gmm_vit_jax import errors
from gmm_vit_jax.data import tiny_imagenet
from gmm_vit_jax.training import config_checks

pytestmark = pytest.mark.usefixtures('quick_compiles')

# wnids.txt is not in sorted order in the download; labels follow the sorted order.
WNIDS = ('n09999999', 'n01443537', 'n04067472')
COLOURS = {'n01443537': (200, 30, 30), 'n04067472': (30, 200, 30), 'n09999999': (30, 30, 200)}


def write_jpeg(path, colour, grey=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new('RGB', (64, 64), colour)
  (image.convert('L') if grey else image).save(path, quality=95)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'tiny-imagenet-200'
  root.mkdir()
  (root / 'wnids.txt').write_text('\n'.join(WNIDS) + '\n')
  for wnid in WNIDS:
    for i in range(3):
      write_jpeg(
        str(root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG'),
        COLOURS[wnid],
        grey=(wnid == WNIDS[0] and i == 2),
      )
    (root / 'train' / wnid / f'{wnid}_boxes.txt').write_text('')
  # All validation images in one folder, classes only in the annotations.
  val_classes = ['n04067472', 'n09999999', 'n01443537', 'n04067472', 'n01443537']
  lines = []
  for i, wnid in enumerate(val_classes):
    write_jpeg(str(root / 'val' / 'images' / f'val_{i}.JPEG'), COLOURS[wnid])
    lines.append(f'val_{i}.JPEG\t{wnid}\t0\t0\t63\t63')
  (root / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
  return str(root), val_classes


def colour_labels(images):
  """The class whose colour each (mostly solid) image is nearest to."""
  ids = sorted(WNIDS)
  palette = np.array([COLOURS[w] for w in ids], float)
  mean = images.reshape(len(images), -1, 3).mean(1)
  return np.argmin(((mean[:, None] - palette[None]) ** 2).sum(-1), axis=1)


def test_train_split(folder):
  root, _ = folder
  images, labels = tiny_imagenet.load(root, 'train')
  assert images.shape == (9, 64, 64, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert tiny_imagenet.class_ids(root) == sorted(WNIDS)
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  colour = labels != 2  # The greyscale image of n09999999 has lost its colour.
  np.testing.assert_array_equal(colour_labels(images)[colour], labels[colour])
  grey = images[labels == 2][-1]
  assert (grey[..., 0] == grey[..., 1]).all()


def test_val_classes_come_from_annotations(folder):
  root, val_classes = folder
  images, labels = tiny_imagenet.load(root, 'val')
  assert images.shape == (5, 64, 64, 3)
  np.testing.assert_array_equal(labels, [sorted(WNIDS).index(w) for w in val_classes])
  np.testing.assert_array_equal(colour_labels(images), labels)


def test_val_sorted_into_class_folders(folder):
  root, _ = folder
  sorted_val = os.path.join(root, 'val')
  os.remove(os.path.join(sorted_val, 'val_annotations.txt'))
  for wnid in WNIDS:
    write_jpeg(os.path.join(sorted_val, wnid, 'images', 'a.JPEG'), COLOURS[wnid])
  images, labels = tiny_imagenet.load(root, 'val')
  np.testing.assert_array_equal(labels, [0, 1, 2])
  np.testing.assert_array_equal(colour_labels(images), labels)


def test_missing_folder_says_how_to_get_it_in_one_line(tmp_path):
  with pytest.raises(errors.DatasetUnavailableError, match='tiny-imagenet-200.zip') as error:
    tiny_imagenet.load(str(tmp_path / 'nowhere'), 'train')
  assert '\n' not in str(error.value)


def test_no_folder_at_all_is_refused_with_the_config():
  with pytest.raises(errors.ConfigError, match='needs dataset.data_dir'):
    config_checks.check(gmm_vit_cifar10.get_config('tiny_imagenet'))


def test_a_damaged_image_or_annotation_names_the_file(folder):
  root, _ = folder
  damaged = os.path.join(root, 'val', 'images', 'val_1.JPEG')
  with open(damaged, 'wb') as f:
    f.write(b'not a jpeg')
  with pytest.raises(errors.DatasetError, match=f'{damaged} cannot be read as an image'):
    tiny_imagenet.load(root, 'val')
  with open(os.path.join(root, 'val', 'val_annotations.txt'), 'a') as f:
    f.write('val_9.JPEG n01443537\n')
  with pytest.raises(errors.DatasetError, match='is not "<file>'):
    tiny_imagenet.load(root, 'val')


def test_unknown_split_and_class(folder):
  root, _ = folder
  with pytest.raises(ValueError, match='split'):
    tiny_imagenet.load(root, 'test')
  with open(os.path.join(root, 'val', 'val_annotations.txt'), 'a') as f:
    f.write('val_0.JPEG\tn00000000\t0\t0\t1\t1\n')
  with pytest.raises(ValueError, match='n00000000'):
    tiny_imagenet.load(root, 'val')


def test_normalisation_constants():
  assert tiny_imagenet.MEAN == (0.4802, 0.4481, 0.3975)
  assert tiny_imagenet.STD == (0.2770, 0.2691, 0.2821)


def test_the_paper_config_trains_from_the_folder(folder, tmp_path):
  from configs import gmm_vit_cifar10
  from gmm_vit_jax.training import loop

  config = gmm_vit_cifar10.get_config('tiny_imagenet')
  assert config.model.patch_size == 8  # 64x64 images keep the 8x8 token grid.
  config.model.update(dict(dim=16, depth=1, num_heads=2, head_dim=8))
  config.update(dict(batch_size=3, eval_batch_size=5, epochs=1, passes_per_epoch=1))
  config.schedule.warmup_epochs = 0
  config.augment.autoaugment = 'none'  # The policies have tests of their own; compiling is slow.
  config.dataset.data_dir = folder[0]
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['completed'] and summary['step'] == 3  # 9 training images, batch 3.
  assert np.isfinite(summary['eval_loss'])
