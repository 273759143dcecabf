"""The one preprocessing of image files (gmm_vit_jax/data/images.py) against independent
NumPy computations: area resizing of the centre square, 16-bit and float ranges, alpha over
white, grey <-> RGB, refused files; predict's background hint."""

import pickle

import numpy as np
import pytest
from PIL import Image

from gmm_vit_jax import predict
from gmm_vit_jax.data import images


def area_weights(n_in: int, n_out: int, start: float, length: float) -> np.ndarray:
  """(n_out, n_in): the share of each input pixel [j, j + 1) in output pixel i, which covers
  [start + i * length / n_out, start + (i + 1) * length / n_out)."""
  step = length / n_out
  low = start + step * np.arange(n_out)[:, None]
  pixel = np.arange(n_in)
  overlap = np.clip(np.minimum(low + step, pixel + 1) - np.maximum(low, pixel), 0, None)
  return overlap / step


def area_fit(pixels: np.ndarray, size: int) -> np.ndarray:
  """float (H, W, C) -> its centre square averaged over size x size areas."""
  h, w = pixels.shape[:2]
  side = min(h, w)
  rows = area_weights(h, size, (h - side) / 2, side)
  cols = area_weights(w, size, (w - side) / 2, side)
  return np.einsum('ih,hwc,jw->ijc', rows, pixels.astype(np.float64), cols)


def to_uint8(unit: np.ndarray) -> np.ndarray:
  return np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize('shape,size', [((20, 30), 8), ((24, 12), 5), ((16, 16), 7), ((9, 33), 9)])
def test_rgb_png_is_area_resized_from_its_centre_square(tmp_path, shape, size):
  pixels = RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)
  path = str(tmp_path / 'x.png')
  Image.fromarray(pixels).save(path)
  out = images.read_image(path, size, 3)
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  expected = to_uint8(area_fit(pixels / 255, size))
  assert np.abs(out.astype(int) - expected).max() <= 1


def test_16_bit_grey_png_keeps_its_precision_until_the_end(tmp_path):
  pixels = RNG.integers(0, 65536, (18, 12), dtype=np.uint16)
  path = str(tmp_path / 'deep.png')
  Image.fromarray(pixels).save(path)
  assert Image.open(path).mode == 'I;16'
  grey = images.read_image(path, 6, 1)
  expected = to_uint8(area_fit(pixels[..., None] / 65535, 6))
  assert np.abs(grey.astype(int) - expected).max() <= 1
  rgb = images.read_image(path, 6, 3)
  assert (rgb == grey).all()


def test_rgba_is_composited_over_white_and_converted_to_grey(tmp_path):
  pixels = RNG.integers(0, 256, (10, 10, 4), dtype=np.uint8)
  pixels[0, 0, 3], pixels[0, 1, 3] = 0, 255  # Fully transparent, fully opaque.
  path = str(tmp_path / 'clear.png')
  Image.fromarray(pixels, 'RGBA').save(path)
  unit = pixels / 255
  over_white = unit[..., :3] * unit[..., 3:] + (1 - unit[..., 3:])
  rgb = images.read_image(path, 10, 3)
  assert np.abs(rgb.astype(int) - to_uint8(over_white)).max() <= 1
  assert (rgb[0, 0] == 255).all() and (rgb[0, 1] == pixels[0, 1, :3]).all()
  grey = images.read_image(path, 10, 1)
  luma = over_white @ np.array([0.299, 0.587, 0.114])
  assert np.abs(grey[..., 0].astype(int) - to_uint8(luma)).max() <= 1


def test_float_images_are_scaled_to_their_range(tmp_path):
  inside = RNG.random((8, 8), dtype=np.float32)
  beyond = inside * 40 - 7
  for name, pixels in (('inside.tif', inside), ('beyond.tif', beyond)):
    Image.fromarray(pixels).save(str(tmp_path / name))
  expected = to_uint8(inside[..., None])
  assert (
    np.abs(images.read_image(str(tmp_path / 'inside.tif'), 8, 1).astype(int) - expected).max() <= 1
  )
  stretched = (inside - inside.min()) / (inside.max() - inside.min())
  assert (
    np.abs(
      images.read_image(str(tmp_path / 'beyond.tif'), 8, 1).astype(int)
      - to_uint8(stretched[..., None])
    ).max()
    <= 1
  )


def test_jpeg_bmp_webp_and_upscaling(tmp_path):
  pixels = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
  for name, options in (
    ('a.jpg', dict(quality=95)),
    ('a.bmp', {}),
    ('a.webp', dict(lossless=True)),
  ):
    path = str(tmp_path / name)
    Image.fromarray(pixels).save(path, **options)
    decoded = np.asarray(Image.open(path).convert('RGB')) / 255
    out = images.read_image(path, 4, 3)
    assert np.abs(out.astype(int) - to_uint8(area_fit(decoded, 4))).max() <= 1, name
  # Growing: the centre square, bilinear; a constant image stays constant.
  Image.fromarray(np.full((3, 5), 77, np.uint8)).save(str(tmp_path / 'small.png'))
  assert (images.read_image(str(tmp_path / 'small.png'), 12, 3) == 77).all()


def test_multi_frame_and_undecodable_files_are_refused_with_their_name(tmp_path):
  frames = [Image.fromarray(np.full((6, 6), v, np.uint8)) for v in (0, 120, 240)]
  animation = str(tmp_path / 'moving.gif')
  frames[0].save(animation, save_all=True, append_images=frames[1:])
  with pytest.raises(images.ImageError, match=r'moving\.gif.*3 frames'):
    images.read_image(animation, 6, 3)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'\x89PNG not really')
  with pytest.raises(images.ImageError, match=r'broken\.png.*not an image file PIL can read') as e:
    images.read_image(str(broken), 6, 3)
  copied = pickle.loads(pickle.dumps(e.value))  # As grain's workers send it back.
  assert (copied.path, copied.why, str(copied)) == (e.value.path, e.value.why, str(e.value))


def test_exif_orientation_is_applied(tmp_path):
  pixels = np.zeros((4, 8), np.uint8)
  pixels[:, :4] = 255  # Left half white.
  image = Image.fromarray(pixels)
  exif = image.getexif()
  exif[0x0112] = 6  # Stored rotated: shown turned 90 degrees clockwise.
  path = str(tmp_path / 'turned.jpg')
  image.save(path, exif=exif, quality=100)
  out = images.read_image(path, 4, 1)[..., 0].astype(int)
  assert out[:2].mean() > 200 and out[2:].mean() < 50  # Now the top half is white.


def test_predict_reads_through_the_same_function_and_hints_at_invert(tmp_path):
  path = str(tmp_path / 'ink.png')
  ink = np.full((16, 16), 250, np.uint8)
  ink[4:12, 7:9] = 10  # A dark stroke on white paper.
  Image.fromarray(ink).save(path)
  pixels = predict.read_image(path, 8, 1)
  assert (pixels == images.read_image(path, 8, 1)).all()
  assert 'try --invert' in predict.background_hint(pixels, 'dark', inverted=False)
  inverted = predict.read_image(path, 8, 1, invert=True)
  assert (inverted == 255 - pixels).all()
  assert predict.background_hint(inverted, 'dark', inverted=True) is None
  assert 'without --invert' in predict.background_hint(inverted, 'light', inverted=True)
  assert predict.background_hint(pixels, None, inverted=False) is None
