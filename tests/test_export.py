"""Inference bundles: same logits as the model, input checks, rebuild, the predict CLI."""

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file

from gmm_vit_jax import export, predict
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.data.info import CIFAR10_CLASSES, DATASET_INFO
from gmm_vit_jax.errors import UserError
from gmm_vit_jax.models import build_model
from tests.model_testing import tiny_vit_config

pytestmark = pytest.mark.usefixtures('quick_compiles')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(config, seed: int = 0) -> nnx.Module:
  info = DATASET_INFO[config.dataset.name]
  return build_model(
    config.model,
    num_classes=info['num_classes'],
    image_size=info['image_size'],
    channels=info['channels'],
    rngs=nnx.Rngs(seed),
  )


def _uint8_images(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _model_logits(model, images, dataset: str) -> np.ndarray:
  info = DATASET_INFO[dataset]
  return np.asarray(model(normalize(images, info['mean'], info['std'])))


@pytest.fixture(scope='module')
def gmm_bundle(tmp_path_factory):
  config = tiny_vit_config('gmm')
  model = _model(config)
  directory = str(tmp_path_factory.mktemp('bundle'))
  export.save_bundle(model, config, directory)
  return model, config, directory


@pytest.mark.parametrize('batch', [1, 3])
def test_predict_gives_the_models_logits(gmm_bundle, batch):
  model, _, directory = gmm_bundle
  images = _uint8_images((batch, 32, 32, 3), seed=batch)
  logits = export.load(directory).predict(images)
  assert logits.dtype == np.float32 and logits.shape == (batch, 10)
  np.testing.assert_allclose(logits, _model_logits(model, images, 'cifar10'), rtol=0, atol=1e-5)


def test_plain_vit_bundle(tmp_path):
  config = tiny_vit_config('none')
  model = _model(config, seed=1)
  export.save_bundle(model, config, str(tmp_path))
  images = _uint8_images((2, 32, 32, 3))
  np.testing.assert_allclose(
    export.load(str(tmp_path)).predict(images),
    _model_logits(model, images, 'cifar10'),
    rtol=0,
    atol=1e-5,
  )


def test_single_channel_digits_bundle(tmp_path):
  config = tiny_vit_config('gmm', 'digits')
  model = _model(config)
  export.save_bundle(model, config, str(tmp_path))
  bundle = export.load(str(tmp_path))
  assert bundle.image_shape == (8, 8, 1)
  images = _uint8_images((2, 8, 8, 1))
  np.testing.assert_allclose(
    bundle.predict(images), _model_logits(model, images, 'digits'), rtol=0, atol=1e-5
  )


def test_bundle_contents(gmm_bundle):
  model, config, directory = gmm_bundle
  params = load_file(os.path.join(directory, export.PARAMS_FILE))
  expected = export.flat_variables(model)
  assert set(params) == set(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(params[name], value)
  assert 'blocks.1.attention.mask.sigma' in params
  with open(os.path.join(directory, export.CONFIG_FILE)) as f:
    assert json.load(f) == json.loads(config.to_json())
  with open(os.path.join(directory, export.PREPROCESS_FILE)) as f:
    preprocess = json.load(f)
  assert preprocess['class_names'] == list(CIFAR10_CLASSES)
  assert preprocess['mean'] == list(DATASET_INFO['cifar10']['mean'])
  assert (preprocess['image_size'], preprocess['channels']) == (32, 3)


def test_serialized_forward_has_a_symbolic_batch(gmm_bundle):
  exported = export.load(gmm_bundle[2]).exported
  images = exported.in_avals[-1]
  assert str(images.shape[0]) == 'batch' and images.shape[1:] == (32, 32, 3)
  assert images.dtype == np.uint8
  assert set(exported.platforms) == set(export.PLATFORMS)


def test_rebuilt_model_gives_the_same_logits(gmm_bundle):
  model, _, directory = gmm_bundle
  rebuilt = export.load(directory).build_model()
  images = _uint8_images((2, 32, 32, 3), seed=5)
  np.testing.assert_array_equal(
    _model_logits(rebuilt, images, 'cifar10'), _model_logits(model, images, 'cifar10')
  )


@pytest.mark.parametrize(
  'images, message',
  [
    (np.zeros((2, 32, 32, 3), np.float32), 'got dtype float32'),
    (np.zeros((2, 32, 32, 1), np.uint8), r'got shape \(2, 32, 32, 1\)'),
    (np.zeros((32, 32, 3), np.uint8), r'got shape \(32, 32, 3\)'),
    (np.zeros((2, 16, 16, 3), np.uint8), r'got shape \(2, 16, 16, 3\)'),
  ],
)
def test_predict_rejects_wrong_inputs(gmm_bundle, images, message):
  with pytest.raises(ValueError, match=r'uint8 images of shape \(B, 32, 32, 3\).*' + message):
    export.load(gmm_bundle[2]).predict(images)


def test_set_flat_variables_names_the_problem():
  model = _model(tiny_vit_config('gmm'))
  values = export.flat_variables(model)
  bad_shape = dict(values, **{'head.bias': np.zeros(7, np.float32)})
  with pytest.raises(ValueError, match=r"'head.bias' has shape \(7,\)"):
    export.set_flat_variables(model, bad_shape)
  del values['head.bias']
  with pytest.raises(ValueError, match=r"missing \['head.bias'\]"):
    export.set_flat_variables(model, values)


def test_top_classes_are_softmax_ranked():
  logits = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 1.0], np.float32)
  names = list('abcdef')
  top = predict.top_classes(logits, names)
  probs = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
  assert [index for _, index, _ in top] == [1, 3, 5, 0, 4]
  assert [name for name, _, _ in top] == ['b', 'd', 'f', 'a', 'e']
  np.testing.assert_allclose([p for _, _, p in top], probs[[1, 3, 5, 0, 4]], rtol=1e-6)


def test_read_image_converts_channels_and_size(tmp_path):
  path = str(tmp_path / 'grey.png')
  Image.fromarray(np.full((20, 30), 200, np.uint8)).save(path)
  rgb = predict.read_image(path, 32, 3)
  assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and np.all(rgb == 200)
  path = str(tmp_path / 'colour.png')
  Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (10, 10, 1))).save(path)
  grey = predict.read_image(path, 8, 1)
  # ITU-R 601-2 luma of pure red: 255 * 299 / 1000.
  assert grey.shape == (8, 8, 1) and np.all(grey == 76)


def _png_header_only(path, width: int, height: int) -> None:
  """A PNG that declares width x height pixels and holds none: a decompression bomb's header."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return (
      struct.pack('>I', len(data))
      + kind
      + data
      + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  with open(path, 'wb') as f:
    f.write(
      b'\x89PNG\r\n\x1a\n'
      + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0))
      + chunk(b'IEND', b'')
    )


def test_predict_cli_prints_top5_and_names_each_unreadable_file(gmm_bundle, tmp_path):
  path = str(tmp_path / 'image.png')
  Image.fromarray(_uint8_images((40, 48, 3), seed=7)).save(path)
  missing, text, bomb = (str(tmp_path / name) for name in ('gone.png', 'notes.txt', 'bomb.png'))
  with open(text, 'w') as f:
    f.write('not an image')
  _png_header_only(bomb, 40_000, 40_000)
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.predict',
      f'--export={gmm_bundle[2]}',
      missing,
      path,
      text,
      bomb,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1
  assert 'Unable to initialize backend' not in result.stderr, result.stderr
  errors = [l for l in result.stderr.splitlines() if 'cannot read' in l or 'could not' in l]
  assert errors[0] == f'{missing}: cannot read: no such file'
  assert errors[1] == f'{text}: cannot read: not an image file PIL can read'
  assert errors[2].startswith(f'{bomb}: cannot read: too many pixels to decode safely')
  assert errors[3] == '3 of 4 files could not be read.' and len(errors) == 4
  lines = result.stdout.strip().splitlines()
  assert lines[0] == path and len(lines) == 6
  names = [line.split()[1] for line in lines[1:]]
  assert [line.split()[0] for line in lines[1:]] == ['1.', '2.', '3.', '4.', '5.']
  assert len(set(names)) == 5 and set(names) <= set(CIFAR10_CLASSES)
  probs = [float(line.split()[-1]) for line in lines[1:]]
  assert probs == sorted(probs, reverse=True)


def test_predict_invert_flips_the_pixels(tmp_path):
  path = str(tmp_path / 'ink.png')
  Image.fromarray(np.full((8, 8), 200, np.uint8)).save(path)
  assert np.all(predict.read_image(path, 8, 1, invert=True) == 55)


def test_predict_help_says_what_the_digits_model_expects():
  result = subprocess.run(
    [sys.executable, '-m', 'gmm_vit_jax.predict', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert 'light strokes on a dark background' in result.stdout + result.stderr
  assert '--invert' in result.stdout + result.stderr


def test_a_directory_that_is_not_a_bundle_says_so(tmp_path):
  with pytest.raises(UserError, match='is not an inference bundle .*forward.jax_export'):
    export.load(str(tmp_path))


def test_out_must_be_new_empty_or_a_bundle_to_overwrite(gmm_bundle, tmp_path):
  _, _, bundle = gmm_bundle
  (tmp_path / 'empty').mkdir()
  for fine in (tmp_path / 'new' / 'bundle', tmp_path / 'empty'):
    export.check_out(str(fine), overwrite=False)
  export.check_out(bundle, overwrite=True)
  with pytest.raises(
    UserError, match=f'--out {bundle} holds a bundle already: pass --overwrite to replace it'
  ):
    export.check_out(bundle, overwrite=False)
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'config.json').write_text('{}')
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  for overwrite in (False, True):
    with pytest.raises(
      UserError,
      match=r'holds files that are not part of a bundle \(notes.txt\)'
      ': choose an empty or new --out; nothing was written.',
    ):
      export.check_out(str(tmp_path / 'mine'), overwrite)
  file = tmp_path / 'model.bin'
  file.write_text('x')
  for out, where in ((file, 'is a file'), (file / 'bundle', f'lies under {file}, which is a file')):
    with pytest.raises(
      UserError,
      match=f'--out {out} {where}: choose a directory that does not '
      r'exist yet \(it is created\).',
    ):
      export.check_out(str(out), overwrite=True)
