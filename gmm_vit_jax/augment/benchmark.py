"""Throughput of `augment_batch` alone, jitted, per stage of the recipe.

    python -m gmm_vit_jax.augment.benchmark [--batch 128] [--size 32] [--steps 20] [--repeats 3]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from gmm_vit_jax.augment import augment_batch

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def stages():
  """(name, config) from flip + crop up to the full CIFAR-10 recipe."""
  full = common.paper_recipe('cifar10').augment
  none = dict(autoaugment='none', erasing_prob=0.0, mix_prob=0.0)
  steps = [('flip + crop', none),
           ('+ AutoAugment', dict(erasing_prob=0.0, mix_prob=0.0)),
           ('+ random erasing', dict(mix_prob=0.0)),
           ('+ Mixup / CutMix (full)', {})]
  out = []
  for name, overrides in steps:
    config = full.copy_and_resolve_references()
    config.update(overrides)
    out.append((name, config))
  return out


def images_per_second(config, batch: int, size: int, steps: int, repeats: int) -> float:
  """The best of `repeats` timed runs of `steps` batches each, after a warm-up call."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  run = jax.jit(lambda x, y, k: augment_batch(x, y, k, config, num_classes=10,
                                              mean=CIFAR_MEAN, std=CIFAR_STD))
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'augment_batch, batch {args.batch}, {args.size}x{args.size}x3 uint8, '
        f'best of {args.repeats} runs of {args.steps} steps after warm-up, '
        f'on {device.platform} ({device.device_kind}, {jax.device_count()} device(s))')
  print(f'| {"stage":<26} | {"images/s":>10} |')
  print(f'|{"-" * 28}|{"-" * 12}|')
  for name, config in stages():
    rate = images_per_second(config, args.batch, args.size, args.steps, args.repeats)
    print(f'| {name:<26} | {rate:>10,.0f} |', flush=True)


if __name__ == '__main__':
  main()
