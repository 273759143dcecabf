"""Throughput of `augment_batch` alone, jitted, per stage of a config's recipe.

    python -m gmm_vit_jax.benchmarks.augment --config=configs/gmm_vit_cifar10.py \
        [--batch=128] [--steps=20] [--repeats=3]

Random uint8 images of the config's dataset shape, normalised with its mean and std.
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gmm_vit_jax import cli
from gmm_vit_jax.augment import augment_batch
from gmm_vit_jax.data.info import dataset_info


def stages(full: ml_collections.ConfigDict):
  """(name, config) from flip + crop up to the full recipe `full` (a config's augment)."""
  none = dict(autoaugment='none', erasing_prob=0.0, mix_prob=0.0)
  steps = [
    ('flip + crop', none),
    ('+ AutoAugment', dict(erasing_prob=0.0, mix_prob=0.0)),
    ('+ random erasing', dict(mix_prob=0.0)),
    ('+ Mixup / CutMix (full)', {}),
  ]
  out = []
  for name, overrides in steps:
    config = full.copy_and_resolve_references()
    config.update(overrides)
    out.append((name, config))
  return out


def images_per_second(config, info: dict, batch: int, steps: int, repeats: int) -> float:
  """The best of `repeats` timed runs of `steps` batches each, after a warm-up call."""
  rng = np.random.default_rng(0)
  size, channels = info['image_size'], info['channels']
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, info['num_classes'], batch), jnp.int32)
  run = jax.jit(
    lambda x, y, k: augment_batch(
      x, y, k, config, num_classes=info['num_classes'], mean=info['mean'], std=info['std']
    )
  )
  keys = list(jax.random.split(jax.random.key(0), steps))  # Sliced before timing.
  jax.block_until_ready(run(images, labels, keys[0]))  # Compile and warm up.
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    for key in keys:
      out = run(images, labels, key)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
  return batch * steps / best


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  info = dataset_info(args.config.dataset)
  size, channels = info['image_size'], info['channels']
  device = jax.devices()[0]
  print(
    f'augment_batch, batch {args.batch}, {size}x{size}x{channels} uint8, '
    f'best of {args.repeats} runs of {args.steps} steps after warm-up, '
    f'on {device.platform} ({device.device_kind}, {jax.device_count()} device(s))'
  )
  print(f'| {"stage":<26} | {"images/s":>10} |')
  print(f'|{"-" * 28}|{"-" * 12}|')
  for name, config in stages(args.config.augment):
    rate = images_per_second(config, info, args.batch, args.steps, args.repeats)
    print(f'| {name:<26} | {rate:>10,.0f} |', flush=True)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Config file whose augment recipe to time.')
  flags.DEFINE_integer('batch', 128, 'Images per batch.')
  flags.DEFINE_integer('steps', 20, 'Batches per timed run.')
  flags.DEFINE_integer('repeats', 3, 'Timed runs; the best counts.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
