"""Augmentation: every AutoAugment and RandAugment op against PIL, the policies, the Inception
crop against NumPy and PIL, erasing and mixing statistics."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_digits

from configs import common, gmm_vit_imagenet, hatnet_imagenet
from gmm_vit_jax.augment import augment_batch, augmentation_grid, ops, policies, randaugment
from gmm_vit_jax.augment.autoaugment import apply_op, autoaugment
from gmm_vit_jax.augment.erasing import random_erasing
from gmm_vit_jax.augment.inception_crop import ATTEMPTS, DRAWS, crop_box, resized_crop
from gmm_vit_jax.augment.mix import cutmix_box, mix_batch, symmetric_beta
from gmm_vit_jax.training import config_checks

pytestmark = pytest.mark.usefixtures('quick_compiles')

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def sample_images() -> np.ndarray:
  """(8, 32, 32, 3) uint8: four real digits upsampled and coloured, four noise images."""
  digits = load_digits().images[:4] / 16.0
  smooth = []
  for d in digits:
    grey = np.asarray(Image.fromarray((d * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
    smooth.append(np.stack([grey, (grey * 0.6 + 60).astype(np.uint8), 255 - grey // 2], -1))
  noise = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  return np.concatenate([np.stack(smooth), noise])


IMAGES = sample_images()


def pil_affine(x, matrix, resample):
  image = Image.fromarray(x)
  return np.asarray(
    image.transform(image.size, Image.AFFINE, matrix, resample, fillcolor=(128, 128, 128))
  )


def pil_rotate(x, degrees):
  """The reference's Rotate: RGBA rotation composited over grey 128."""
  rot = Image.fromarray(x).convert('RGBA').rotate(degrees)
  return np.asarray(
    Image.composite(rot, Image.new('RGBA', rot.size, (128,) * 4), rot).convert('RGB')
  )


def enhance(cls):
  return lambda x, f: np.asarray(cls(Image.fromarray(x)).enhance(f))


def run_op(op, magnitude):
  """The op on all IMAGES, one compile per op (the magnitude is traced)."""
  return np.asarray(jax.jit(jax.vmap(op, (0, None)))(jnp.asarray(IMAGES), magnitude))


def reference_outputs(reference, magnitude):
  return np.stack([reference(x, magnitude) for x in IMAGES])


ENHANCE_FACTORS = (0.1, 0.4, 1.0, 1.3, 1.9)
EXACT_OPS = {
  'translate_x': (
    lambda x, m: pil_affine(x, (1, 0, m * 32, 0, 1, 0), Image.NEAREST),
    ops.translate_x,
    (0.45317, -0.2014, 0.0504, -0.3525),
  ),
  'translate_y': (
    lambda x, m: pil_affine(x, (1, 0, 0, 0, 1, m * 32), Image.NEAREST),
    ops.translate_y,
    (-0.45317, 0.1511, 0.3021),
  ),
  'color': (enhance(ImageEnhance.Color), ops.color, ENHANCE_FACTORS),
  'contrast': (enhance(ImageEnhance.Contrast), ops.contrast, ENHANCE_FACTORS),
  'brightness': (enhance(ImageEnhance.Brightness), ops.brightness, ENHANCE_FACTORS),
  'sharpness': (enhance(ImageEnhance.Sharpness), ops.sharpness, ENHANCE_FACTORS),
  'posterize': (
    lambda x, b: np.asarray(ImageOps.posterize(Image.fromarray(x), b)),
    ops.posterize,
    (4, 5, 6, 7, 8),
  ),
  'solarize': (
    lambda x, t: np.asarray(ImageOps.solarize(Image.fromarray(x), t)),
    ops.solarize,
    tuple(policies.MAGNITUDES['solarize']),
  ),
}


@pytest.mark.parametrize('name', sorted(EXACT_OPS))
def test_op_matches_pil_exactly(name):
  reference, op, magnitudes = EXACT_OPS[name]
  for m in magnitudes:
    np.testing.assert_array_equal(
      run_op(op, m), reference_outputs(reference, m), err_msg=f'{name}({m})'
    )


@pytest.mark.parametrize(
  'name,reference', [('equalize', ImageOps.equalize), ('invert', ImageOps.invert)]
)
def test_parameterless_op_matches_pil_exactly(name, reference):
  images = np.concatenate([IMAGES, IMAGES // 3 + 60, np.full((1, 32, 32, 3), 7, np.uint8)])
  ours = np.asarray(jax.jit(jax.vmap(getattr(ops, name)))(jnp.asarray(images)))
  np.testing.assert_array_equal(ours, [np.asarray(reference(Image.fromarray(x))) for x in images])


def test_autocontrast_is_exact_stretch_and_within_one_of_pil():
  """PIL evaluates i * (255 / span) - lo * (255 / span) in float64, which lands just
  below an integer for some exact values and floors to one less; the op computes the
  exact floor((i - lo) * 255 / span)."""
  images = np.concatenate([IMAGES, IMAGES // 3 + 60])
  ours = np.asarray(jax.jit(jax.vmap(ops.autocontrast))(jnp.asarray(images))).astype(int)
  x = images.astype(int)
  lo, hi = x.min((1, 2), keepdims=True), x.max((1, 2), keepdims=True)
  np.testing.assert_array_equal(ours, (x - lo) * 255 // (hi - lo))
  pil = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(i))) for i in images])
  diff = ours - pil.astype(int)
  assert diff.min() >= 0 and diff.max() <= 1
  assert (diff != 0).mean() < 0.05


GEOMETRIC_OPS = {
  'shear_x': (
    lambda x, m: pil_affine(x, (1, m, 0, 0, 1, 0), Image.BICUBIC),
    ops.shear_x,
    tuple(policies.MAGNITUDES['shear_x'][1:]) + (-0.3, -0.1667, -0.0333),
  ),
  'shear_y': (
    lambda x, m: pil_affine(x, (1, 0, 0, m, 1, 0), Image.BICUBIC),
    ops.shear_y,
    tuple(policies.MAGNITUDES['shear_y'][1:]) + (-0.3, -0.1, -0.0667),
  ),
  'rotate': (pil_rotate, ops.rotate, tuple(policies.MAGNITUDES['rotate'])),
}


@pytest.mark.parametrize('name', sorted(GEOMETRIC_OPS))
def test_geometric_op_matches_pil(name):
  """Coordinates are float32 here and float64 in PIL: a sample that falls exactly on a
  pixel or image edge can go either way, so a few pixels per image may differ (by one
  grey level after a bicubic truncation, or entirely at an edge); 99% must agree."""
  reference, op, magnitudes = GEOMETRIC_OPS[name]
  for m in magnitudes:
    diff = np.abs(run_op(op, m).astype(int) - reference_outputs(reference, m).astype(int))
    assert (diff.max(-1) > 0).mean() < 0.01, f'{name}({m})'
    assert (diff.max(-1) > 1).mean() < 0.005, f'{name}({m})'


def pil_step(name, x, magnitude, sign):
  """One AutoAugment step as the reference's SubPolicy applies it."""
  image = Image.fromarray(x)
  factor = 1 + magnitude * sign
  steps = {
    'shear_x': lambda: pil_affine(x, (1, magnitude * sign, 0, 0, 1, 0), Image.BICUBIC),
    'translate_y': lambda: pil_affine(x, (1, 0, 0, 0, 1, magnitude * sign * 32), Image.NEAREST),
    'rotate': lambda: pil_rotate(x, magnitude),
    'color': lambda: ImageEnhance.Color(image).enhance(factor),
    'contrast': lambda: ImageEnhance.Contrast(image).enhance(factor),
    'sharpness': lambda: ImageEnhance.Sharpness(image).enhance(factor),
    'brightness': lambda: ImageEnhance.Brightness(image).enhance(factor),
    'posterize': lambda: ImageOps.posterize(image, int(magnitude)),
    'solarize': lambda: ImageOps.solarize(image, magnitude),
    'equalize': lambda: ImageOps.equalize(image),
  }
  return np.asarray(steps[name]())


# One compile for every op: the op index is traced.
APPLY_OP = jax.jit(jax.vmap(apply_op, (0, None, None, None)))


@pytest.mark.parametrize(
  'name,level,sign',
  [
    ('shear_x', 5, -1.0),
    ('translate_y', 9, 1.0),
    ('rotate', 8, -1.0),
    ('color', 7, -1.0),
    ('contrast', 4, 1.0),
    ('sharpness', 9, 1.0),
    ('brightness', 6, -1.0),
    ('posterize', 9, 1.0),
    ('solarize', 3, 1.0),
    ('equalize', 0, 1.0),
  ],
)
def test_policy_step_maps_level_and_sign_as_reference(name, level, sign):
  """Levels index MAGNITUDES; the sign flips shears, translations and the enhancement
  factor 1 +- m, but never the rotation (the reference always rotates counter-clockwise)."""
  magnitude = np.float32(policies.MAGNITUDES[name][level])
  op = np.int32(policies.OP_NAMES.index(name))
  ours = APPLY_OP(jnp.asarray(IMAGES), op, magnitude, np.float32(sign))
  expected = np.stack([pil_step(name, x, float(magnitude), sign) for x in IMAGES])
  diff = np.abs(np.asarray(ours).astype(int) - expected.astype(int)).max(-1)
  assert (diff > 0).mean() < 0.01


def test_policies_have_25_two_step_sub_policies():
  assert set(policies.POLICIES) == {'cifar10', 'svhn', 'imagenet'}
  for name in policies.POLICIES:
    op_table, probs, mags = policies.policy_tables(name)
    assert op_table.shape == probs.shape == mags.shape == (25, 2)
    assert ((probs >= 0) & (probs <= 1)).all()
    for sub in policies.POLICIES[name]:
      for op, _, level in sub:
        assert op in policies.OP_NAMES and 0 <= level <= 9
  assert list(policies.MAGNITUDES['posterize']) == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  np.testing.assert_allclose(policies.MAGNITUDES['translate_x'][-1], 150 / 331)
  # Spot checks of the published tables.
  assert policies.POLICIES['cifar10'][0] == (('invert', 0.1, 7), ('contrast', 0.2, 6))
  assert policies.POLICIES['svhn'][24] == (('shear_x', 0.7, 2), ('invert', 0.1, 5))
  assert policies.POLICIES['imagenet'][13] == (('invert', 0.6, 4), ('equalize', 1.0, 8))


def test_autoaugment_step_probabilities(monkeypatch):
  """Each step fires with its own probability, independently, per example."""
  probe = ((('invert', 0.3, 0), ('posterize', 0.6, 9)),) * 25
  monkeypatch.setitem(policies.POLICIES, 'probe', probe)
  n = 2000
  x = np.random.default_rng(1).integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
  out = np.asarray(
    jax.jit(lambda k: autoaugment(jnp.repeat(jnp.asarray(x), n, 0), k, 'probe'))(jax.random.key(0))
  )
  candidates = {
    (i, p): (255 - x if i else x) & (0xF0 if p else 0xFF) for i in (0, 1) for p in (0, 1)
  }
  counts = {c: int((out == v).all(axis=(1, 2, 3)).sum()) for c, v in candidates.items()}
  assert sum(counts.values()) == n
  inverted = (counts[1, 0] + counts[1, 1]) / n
  posterized = (counts[0, 1] + counts[1, 1]) / n
  assert abs(inverted - 0.3) < 0.04 and abs(posterized - 0.6) < 0.04
  assert abs(counts[1, 1] / n - 0.18) < 0.03


def reference_erasing_boxes(n, h, w, rng):
  """The reference's draw (utils/random_erasing.py) in NumPy: (h, w) of each erased box."""
  boxes = []
  while len(boxes) < n:
    for _ in range(100):
      target = rng.uniform(0.02, 0.4) * h * w
      aspect = rng.uniform(0.3, 1 / 0.3)
      eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
      if ew < w and eh < h:
        boxes.append((eh, ew))
        break
  return np.array(boxes)


def test_random_erasing_statistics():
  n, h, w = 4000, 32, 32
  images = jnp.full((n, h, w, 3), -5.0)
  value = np.array(CIFAR_MEAN, np.float32)
  out = np.asarray(
    jax.jit(
      lambda k: random_erasing(images, k, prob=0.25, area=(0.02, 0.4), min_aspect=0.3, value=value)
    )(jax.random.key(0))
  )
  erased = (out != -5.0).any(-1)  # (n, h, w)
  # Erased pixels hold the raw dataset mean, written into the normalised image.
  np.testing.assert_array_equal(out[erased], np.broadcast_to(value, out[erased].shape))
  hit = erased.any((1, 2))
  assert abs(hit.mean() - 0.25) < 0.025
  rows, cols = erased[hit].any(2), erased[hit].any(1)
  eh, ew = rows.sum(1), cols.sum(1)
  np.testing.assert_array_equal(erased[hit].sum((1, 2)), eh * ew)  # One rectangle each.
  assert (eh < h).all() and (ew < w).all()
  area = eh * ew / (h * w)
  assert area.min() >= 0.015 and area.max() <= 0.43
  ref = reference_erasing_boxes(20000, h, w, np.random.default_rng(0))
  ref_area = ref[:, 0] * ref[:, 1] / (h * w)
  assert abs(area.mean() - ref_area.mean()) < 0.02
  assert abs(np.log(eh / ew).mean() - np.log(ref[:, 0] / ref[:, 1]).mean()) < 0.1


def distinct_batch(b=8, size=16):
  """Constant images 10, 20, ... with labels 0..b-1: every pixel names its source."""
  values = 10.0 * (1 + np.arange(b))
  images = jnp.asarray(np.broadcast_to(values[:, None, None, None], (b, size, size, 3)).copy())
  return images, values, jax.nn.one_hot(jnp.arange(b), b)


@jax.jit
def mix_many(keys, prob, cutmix_prob):
  """mix_batch of distinct_batch() under each key; one compile for every test."""
  images, _, targets = distinct_batch()
  return jax.vmap(
    lambda k: mix_batch(
      images, targets, k, prob=prob, cutmix_prob=cutmix_prob, mixup_alpha=1.0, cutmix_beta=1.0
    )
  )(keys)


MIX_KEYS = jax.random.split(jax.random.key(0), 1000)


def test_cutmix_targets_are_the_pasted_area():
  _, values, _ = distinct_batch()
  outs, ts = (np.asarray(a) for a in mix_many(MIX_KEYS, 1.0, 1.0))
  for out, t in zip(outs[:10], ts[:10]):
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    partner = np.argmax(t - 2 * np.eye(len(values)), axis=1)
    for i in range(len(values)):
      own = out[i] == values[i]
      assert (own | (out[i] == values[partner[i]])).all()
      np.testing.assert_allclose(t[i, i], own[..., 0].mean(), atol=1e-6)
      pasted = ~own[..., 0]
      if pasted.any():
        r, c = np.nonzero(pasted)
        assert pasted.sum() == (r.max() - r.min() + 1) * (c.max() - c.min() + 1)


def test_mixup_targets_match_pixel_mixing():
  _, values, _ = distinct_batch()
  outs, ts = (np.asarray(a) for a in mix_many(MIX_KEYS, 1.0, 0.0))
  for out, t in zip(outs[:10], ts[:10]):
    np.testing.assert_allclose(out[:, 0, 0, 0], t @ values, rtol=1e-5)
    assert (out == out[:, :1, :1, :1]).all()


def test_cutmix_box_follows_reference_formula():
  """Sides are 2 * (floor(side * sqrt(1 - lam)) // 2) unless clipped by the edge."""
  rng = np.random.default_rng(0)
  for lam in np.linspace(0.05, 0.95, 19):
    u = rng.uniform(size=2).astype(np.float32)
    top, bottom, left, right = (int(v) for v in cutmix_box(u, 32, 32, lam))
    full = 2 * (int(32 * math.sqrt(1 - lam)) // 2)
    assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
    assert bottom - top <= full and right - left <= full
    assert (bottom - top == full) or top == 0 or bottom == 32
    assert (top + bottom) // 2 == min(int(u[0] * 32), 31) or top == 0 or bottom == 32


def test_symmetric_beta_moments():
  """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); a = 1 is the uniform."""
  draw = jax.jit(jax.vmap(symmetric_beta, (0, None)))
  keys = jax.random.split(jax.random.key(0), 20000)
  for a in (0.3, 2.0):
    lam = np.asarray(draw(keys, a))
    assert np.isfinite(lam).all() and ((lam >= 0) & (lam <= 1)).all()
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() / (1 / (4 * (2 * a + 1))) - 1) < 0.05


def test_mix_choice_probabilities():
  images, values, _ = distinct_batch()
  out, t = (np.asarray(a) for a in mix_many(MIX_KEYS, 0.5, 0.5))
  mixed = (t.max(-1) < 1).any(-1)
  # CutMix keeps every pixel one of the sources' values; Mixup blends them.
  blended = (~np.isin(out, values)).any((1, 2, 3, 4))
  cut = mixed & ~blended
  assert abs(mixed.mean() - 0.5) < 0.06
  assert abs(cut.sum() / mixed.sum() - 0.5) < 0.07
  assert (mixed | (out == np.asarray(images)).all((1, 2, 3, 4))).all()


@pytest.fixture(scope='module')
def paper_augment():
  config = common.paper_recipe('cifar10').augment
  return config, jax.jit(
    lambda x, y, k: augment_batch(x, y, k, config, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  )


def test_augment_batch_full_recipe(paper_augment):
  config, augment = paper_augment
  assert config.autoaugment == 'cifar10' and config.mix_prob == 0.5
  images = jnp.asarray(np.concatenate([IMAGES] * 2))
  labels = jnp.arange(16) % 10
  x, t = augment(images, labels, jax.random.key(0))
  assert x.shape == (16, 32, 32, 3) and x.dtype == jnp.float32 and t.shape == (16, 10)
  np.testing.assert_allclose(np.asarray(t).sum(1), 1.0, rtol=1e-6)
  x2, t2 = augment(images, labels, jax.random.key(0))
  np.testing.assert_array_equal(x, x2)  # Reproducible from the key.
  x3, _ = augment(images, labels, jax.random.key(1))
  assert not np.array_equal(x, x3)
  # Same image twice in one batch, augmented independently.
  assert not np.array_equal(x[0], x[8])


def test_augment_batch_basic_only_is_flip_and_crop():
  config = ml_collections.ConfigDict(dict(flip=False, crop_padding=0))
  x, t = augment_batch(
    jnp.asarray(IMAGES),
    jnp.arange(8),
    jax.random.key(0),
    config,
    num_classes=10,
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
  )
  expected = (IMAGES / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
  np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(t, np.eye(10)[:8])


def test_bad_policy_is_a_clear_error():
  config = common.paper_recipe('cifar10').augment
  config.autoaugment = 'cifar'
  with pytest.raises(ValueError, match='augment.autoaugment'):
    augment_batch(
      jnp.asarray(IMAGES),
      jnp.arange(8),
      jax.random.key(0),
      config,
      num_classes=10,
      mean=CIFAR_MEAN,
      std=CIFAR_STD,
    )


def test_paper_recipe_policies():
  assert common.paper_recipe('cifar100').augment.autoaugment == 'cifar10'
  assert common.paper_recipe('svhn_cropped').augment.autoaugment == 'svhn'
  assert common.paper_recipe('tiny_imagenet').augment.autoaugment == 'imagenet'
  digits = common.paper_recipe('digits').augment
  assert digits.autoaugment == 'none' and digits.mix_prob == 0 and digits.erasing_prob == 0


def test_augmentation_grid_shape():
  config = ml_collections.ConfigDict(
    dict(
      flip=True, crop_padding=4, erasing_prob=0.5, erasing_area=(0.02, 0.4), erasing_min_aspect=0.3
    )
  )
  grid = augmentation_grid(
    IMAGES[:5], jax.random.key(0), config, mean=CIFAR_MEAN, std=CIFAR_STD, draws=3, pad=2
  )
  assert grid.shape == (4 * 34 + 2, 5 * 34 + 2, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[2:34, 2:34], IMAGES[0])  # Top row: the originals.


SHARDED_MIX = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from gmm_vit_jax import sharding
from gmm_vit_jax.augment.mix import mix_batch
from tests.test_augment import distinct_batch
assert jax.device_count() == 8
mesh, one = sharding.make_mesh(), jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
images, values, targets = distinct_batch(b=32, size=8)
rows = NamedSharding(mesh, P('data'))
images, targets = jax.device_put(images, rows), jax.device_put(targets, rows)
partners, ratios = [], []
for cutmix_prob in (0.0, 1.0):
  run = jax.jit(lambda x, t, k, mesh: mix_batch(x, t, k, prob=1.0, cutmix_prob=cutmix_prob,
                mixup_alpha=1.0, cutmix_beta=1.0, mesh=mesh), static_argnums=3)
  hlo = run.lower(images, targets, jax.random.key(0), mesh).compile().as_text()
  assert not any(op in hlo for op in ('all-gather', 'all-to-all', 'collective-permute')), hlo
  for seed in range(20):
    key = jax.random.key(seed)
    _, t = (np.asarray(a) for a in run(images, targets, key, mesh))
    _, t_one = (np.asarray(a) for a in run(images, targets, key, one))
    # The mixing ratio (the kept share of each image not paired with itself) is the
    # single-device draw.
    kept = lambda d: np.unique(np.round(d[d < 1 - 1e-6], 5))
    np.testing.assert_array_equal(kept(np.diag(t)), kept(np.diag(t_one)))
    # The image mixed into row i is the other label of its target (i itself if none).
    partner = np.where(np.diag(t) > 1 - 1e-6, np.arange(32), np.argmax(t - 2 * np.eye(32), 1))
    partners.append(partner)
partners = np.stack(partners)
assert (partners // 4 == np.arange(32) // 4).all(), partners
# Each shard draws its own pairing.
local = partners % 4
assert any((local[:, 4 * s:4 * s + 4] != local[:, :4]).any() for s in range(1, 8))
print('ok')
"""


def test_mixing_pairs_images_within_each_device_shard():
  """8 simulated devices, 4 images each: every partner comes from its own shard, no
  collective runs, and the mixing ratio is the one a single device draws."""
  import os
  import pathlib
  import subprocess
  import sys

  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  done = subprocess.run(
    [sys.executable, '-c', SHARDED_MIX],
    env=env,
    capture_output=True,
    text=True,
    cwd=pathlib.Path(__file__).parents[1],
    timeout=300,
  )
  assert done.returncode == 0 and 'ok' in done.stdout, done.stderr[-3000:]


# RandAugment as the DeiT recipe configures it (timm's rand-m9-mstd0.5-inc1): the level
# L in [0, 10] maps to each op's argument as below, geometric ops resample bicubically and
# fill with ImageNet's mean colour in 8 bits.
IMAGENET_FILL = (124, 116, 104)


def pil_rand_op(name, x, level, sign):
  """One RandAugment op at `level` with `sign` through PIL."""
  image = Image.fromarray(x)
  f = level / 10
  factor = max(0.1, 1 + 0.9 * f * sign)
  affine = lambda m: np.asarray(
    image.transform(image.size, Image.AFFINE, m, Image.BICUBIC, fillcolor=IMAGENET_FILL)
  )
  add = int(f * 110)
  steps = {
    'autocontrast': lambda: ImageOps.autocontrast(image),
    'equalize': lambda: ImageOps.equalize(image),
    'invert': lambda: ImageOps.invert(image),
    'rotate': lambda: image.rotate(30 * f * sign, resample=Image.BICUBIC, fillcolor=IMAGENET_FILL),
    # PIL takes 1-8 bits; keeping none (level 10) leaves every value 0.
    'posterize': lambda: ImageOps.posterize(image, 4 - int(f * 4)) if f < 1 else np.zeros_like(x),
    'solarize': lambda: ImageOps.solarize(image, 256 - int(f * 256)),
    'solarize_add': lambda: image.point(
      [min(255, i + add) if i < 128 else i for i in range(256)] * 3
    ),
    'color': lambda: ImageEnhance.Color(image).enhance(factor),
    'contrast': lambda: ImageEnhance.Contrast(image).enhance(factor),
    'brightness': lambda: ImageEnhance.Brightness(image).enhance(factor),
    'sharpness': lambda: ImageEnhance.Sharpness(image).enhance(factor),
    'shear_x': lambda: affine((1, 0.3 * f * sign, 0, 0, 1, 0)),
    'shear_y': lambda: affine((1, 0, 0, 0.3 * f * sign, 1, 0)),
    'translate_x': lambda: affine((1, 0, 0.45 * f * sign * x.shape[1], 0, 1, 0)),
    'translate_y': lambda: affine((1, 0, 0, 0, 1, 0.45 * f * sign * x.shape[0])),
  }
  return np.asarray(steps[name]())


# One compile for every op: the op index, level and sign are traced.
RAND_APPLY_OP = jax.jit(jax.vmap(randaugment.apply_op, (0, None, None, None, None)))
RAND_GEOMETRIC = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')


RAND_ENHANCE = ('color', 'contrast', 'brightness', 'sharpness')


@pytest.mark.parametrize('name', randaugment.OP_NAMES)
def test_randaugment_op_matches_pil(name):
  """Exact for the integer ops. The geometric ones may differ in a few pixels, as
  AutoAugment's (float32 against float64 coordinates); the enhancements by one level
  where a blend lands on a truncation boundary (XLA may fuse its multiply and add, PIL
  rounds both); autocontrast by PIL's float rounding
  (test_autocontrast_is_exact_stretch_and_within_one_of_pil)."""
  assert set(randaugment.OP_NAMES) == set(RAND_GEOMETRIC) | {
    'autocontrast',
    'equalize',
    'invert',
    'posterize',
    'solarize',
    'solarize_add',
    'color',
    'contrast',
    'brightness',
    'sharpness',
  }
  op = np.int32(randaugment.OP_NAMES.index(name))
  fill = jnp.asarray(IMAGENET_FILL, jnp.uint8)
  for level, sign in ((9.0, 1.0), (6.3, -1.0), (10.0, -1.0), (2.5, 1.0)):
    ours = np.asarray(
      RAND_APPLY_OP(jnp.asarray(IMAGES), op, np.float32(level), np.float32(sign), fill)
    ).astype(int)
    expected = np.stack([pil_rand_op(name, x, level, sign) for x in IMAGES]).astype(int)
    diff = np.abs(ours - expected).max(-1)
    if name in RAND_GEOMETRIC:
      assert (diff > 0).mean() < 0.01 and (diff > 1).mean() < 0.005, f'{name}({level}, {sign})'
    elif name in RAND_ENHANCE:
      assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f'{name}({level}, {sign})'
    elif name == 'autocontrast':
      assert diff.max() <= 1 and (diff > 0).mean() < 0.05
    else:
      np.testing.assert_array_equal(ours, expected, err_msg=f'{name}({level}, {sign})')


def test_randaugment_draws_map_to_ops_levels_and_signs():
  """Uniforms (op, taken, sign) and a normal per op: the op is OP_NAMES[floor(u0 K)],
  taken when u1 < 0.5, negated when u2 >= 0.5, at level clip(m + std z, 0, 10); the ops
  run in turn."""
  names = randaugment.OP_NAMES
  k = len(names)
  fill = jnp.asarray(IMAGENET_FILL, jnp.uint8)
  draw = jax.jit(
    lambda x, u, z: randaugment.randaugment_image(
      x, u, z, magnitude=9.0, magnitude_std=0.5, fill=fill
    )
  )
  cases = [
    (
      [
        [(names.index('rotate') + 0.5) / k, 0.2, 0.7],
        [(names.index('posterize') + 0.1) / k, 0.4, 0.1],
      ],
      [1.0, -2.0],
    ),
    (
      [[(names.index('shear_x') + 0.9) / k, 0.6, 0.1], [names.index('color') / k, 0.1, 0.9]],
      [0.0, 5.0],
    ),
    ([[0.999, 0.3, 0.3], [0.0, 0.49, 0.6]], [-30.0, 0.4]),
  ]
  for u, z in cases:
    for x in IMAGES[:2]:
      ours = np.asarray(
        draw(jnp.asarray(x), jnp.asarray(u, jnp.float32), jnp.asarray(z, jnp.float32))
      )
      expected = x
      for (u_op, u_take, u_sign), noise in zip(u, z):
        if u_take < 0.5:
          level = min(max(9.0 + 0.5 * noise, 0.0), 10.0)
          expected = pil_rand_op(
            names[min(int(u_op * k), k - 1)], expected, level, 1.0 if u_sign < 0.5 else -1.0
          )
      diff = np.abs(ours.astype(int) - expected.astype(int)).max(-1)
      assert (diff > 1).mean() < 0.01, (u, z)


def test_randaugment_batch_draws_each_example_independently():
  images = jnp.asarray(np.repeat(IMAGES[:1], 16, 0))
  run = jax.jit(
    lambda k: randaugment.randaugment(
      images, k, num_ops=2, magnitude=9.0, magnitude_std=0.5, fill=IMAGENET_FILL
    )
  )
  out = np.asarray(run(jax.random.key(0)))
  assert out.shape == images.shape and out.dtype == np.uint8
  assert len({o.tobytes() for o in out}) > 8
  np.testing.assert_array_equal(out, run(jax.random.key(0)))
  # Each op is skipped with probability 1/2, so about a quarter pass untouched.
  untouched = (out == np.asarray(images)).all((1, 2, 3)).mean()
  assert 0 < untouched < 0.6


def numpy_crop_box(u, height, width, scale, ratio):
  """torchvision's RandomResizedCrop.get_params on the given uniforms, in float64."""
  for i in range(ATTEMPTS):
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[i])
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[ATTEMPTS + i]
    aspect = math.exp(log_ratio)
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return (
        min(int(u[-2] * (height - h + 1)), height - h),
        min(int(u[-1] * (width - w + 1)), width - w),
        h,
        w,
      )
  if width / height < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif width / height > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


DEIT_SCALE, DEIT_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@pytest.mark.parametrize(
  'height,width,scale',
  [
    (32, 32, DEIT_SCALE),
    (24, 40, DEIT_SCALE),
    (40, 16, (0.5, 1.0)),
    (32, 32, (1.5, 2.0)),
    (16, 40, (1.5, 2.0)),
    (40, 16, (1.5, 2.0)),
  ],
)
def test_crop_box_matches_numpy_and_respects_ranges(height, width, scale):
  """Scales above 1 never fit: every box is then the centred fallback."""
  u = np.random.default_rng(height + width).uniform(size=(2000, DRAWS)).astype(np.float32)
  boxes = np.stack(
    jax.jit(jax.vmap(lambda v: crop_box(v, height, width, scale, DEIT_RATIO)))(jnp.asarray(u)), -1
  )
  expected = np.array(
    [numpy_crop_box(v.astype(np.float64), height, width, scale, DEIT_RATIO) for v in u]
  )
  # A side on a rounding tie can round differently in float32.
  assert (boxes != expected).any(-1).mean() < 0.005
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  fallback = numpy_crop_box(np.ones(DRAWS) * 0.999, height, width, (2.0, 2.0), DEIT_RATIO)
  drawn = (boxes != fallback).any(-1)
  if scale[0] > 1:
    assert not drawn.any()
    return
  # A drawn box's sides are rounded from some area in `scale` and ratio in DEIT_RATIO.
  hh, ww = h[drawn], w[drawn]
  area = height * width
  assert ((hh + 0.5) * (ww + 0.5) >= scale[0] * area).all()
  assert ((hh - 0.5) * (ww - 0.5) <= scale[1] * area).all()
  assert ((ww + 0.5) / (hh - 0.5) >= DEIT_RATIO[0]).all()
  assert ((ww - 0.5) / (hh + 0.5) <= DEIT_RATIO[1]).all()
  # The ratio is log-uniform: its log is centred on the range's when the image is square.
  if height == width:
    assert abs(np.log(ww / hh).mean()) < 0.03


def numpy_bicubic_resize_line(line, out_size):
  """PIL's bicubic resize of (N, C) to (out_size, C) in float64, rounded to 8 bits."""
  n = len(line)
  scale = n / out_size
  stretch = max(scale, 1.0)
  support = 2.0 * stretch
  out = np.zeros((out_size, line.shape[1]))
  for i in range(out_size):
    centre = (i + 0.5) * scale
    lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n)
    taps = np.arange(lo, hi)
    t = np.abs((taps - centre + 0.5) / stretch)
    weights = np.where(
      t < 1, (1.5 * t - 2.5) * t * t + 1, np.where(t < 2, (((t - 5) * t + 8) * t - 4) * -0.5, 0.0)
    )
    out[i] = weights @ line[taps] / weights.sum()
  return np.clip(np.floor(out + 0.5), 0, 255)


def numpy_resized_crop(image, top, left, h, w):
  crop = image[top : top + h, left : left + w].astype(np.float64)
  rows = np.stack([numpy_bicubic_resize_line(r, image.shape[1]) for r in crop])
  return np.stack(
    [numpy_bicubic_resize_line(c, image.shape[0]) for c in rows.transpose(1, 0, 2)], 1
  ).astype(np.uint8)


def test_resized_crop_matches_numpy_and_pil():
  """Given the box, the crop resized back to 32 x 32 as PIL's bicubic resize does (PIL's
  8-bit weights are fixed point, so a level may differ by one)."""
  run = jax.jit(jax.vmap(resized_crop, (0, None, None, None, None)))
  for top, left, h, w in (
    (0, 0, 32, 32),
    (3, 5, 9, 14),
    (10, 0, 22, 17),
    (0, 20, 32, 12),
    (7, 7, 1, 2),
  ):
    ours = np.asarray(run(jnp.asarray(IMAGES), top, left, h, w)).astype(int)
    expected = np.stack([numpy_resized_crop(x, top, left, h, w) for x in IMAGES]).astype(int)
    assert np.abs(ours - expected).max() <= 1 and (ours != expected).mean() < 0.01, (h, w)
    pil = np.stack(
      [
        np.asarray(
          Image.fromarray(x).crop((left, top, left + w, top + h)).resize((32, 32), Image.BICUBIC)
        )
        for x in IMAGES
      ]
    ).astype(int)
    assert np.abs(ours - pil).max() <= 1 and (ours != pil).mean() < 0.01, (h, w)
    if (h, w) == (32, 32):
      np.testing.assert_array_equal(ours, IMAGES)


@pytest.mark.parametrize('make', [gmm_vit_imagenet.get_config, hatnet_imagenet.get_config])
def test_imagenet_configs_use_deit_augmentation(make):
  config = make()
  augment = config.augment
  assert augment.inception_crop and augment.crop_padding == 0 and augment.flip
  assert tuple(augment.crop_scale) == DEIT_SCALE and tuple(augment.crop_ratio) == DEIT_RATIO
  assert augment.autoaugment == 'none'
  assert (
    augment.randaugment_ops,
    augment.randaugment_magnitude,
    augment.randaugment_magnitude_std,
  ) == (2, 9.0, 0.5)
  assert config_checks.problems(config) == []
  augment.update(
    dict(autoaugment='imagenet', crop_padding=4, crop_scale=(0.5, 0.1), randaugment_magnitude=12.0)
  )
  found = config_checks.problems(config)
  assert any('augment.crop_scale' in p for p in found)
  assert any('augment.randaugment_magnitude' in p for p in found)
  augment.update(dict(crop_scale=DEIT_SCALE, randaugment_magnitude=9.0))
  found = config_checks.problems(config)
  assert any('two policies' in p for p in found) and any('two crops' in p for p in found)


def test_augment_batch_imagenet_recipe():
  """The ImageNet recipe's augmentation end to end on small images."""
  config = gmm_vit_imagenet.get_config().augment
  augment = jax.jit(
    lambda x, y, k: augment_batch(x, y, k, config, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  )
  images = jnp.asarray(IMAGES)
  x, t = augment(images, jnp.arange(8), jax.random.key(0))
  assert x.shape == (8, 32, 32, 3) and x.dtype == jnp.float32 and t.shape == (8, 10)
  np.testing.assert_array_equal(x, augment(images, jnp.arange(8), jax.random.key(0))[0])
  assert not np.array_equal(x, augment(images, jnp.arange(8), jax.random.key(1))[0])
  config.crop_scale = (0.0, 0.5)
  with pytest.raises(ValueError, match='augment.crop_scale'):
    augment_batch(
      images,
      jnp.arange(8),
      jax.random.key(0),
      config,
      num_classes=10,
      mean=CIFAR_MEAN,
      std=CIFAR_STD,
    )
