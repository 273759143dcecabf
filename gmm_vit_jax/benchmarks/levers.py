"""Each speed lever of the trainer switched off in turn, against everything on.

    python -m gmm_vit_jax.benchmarks.levers --config=configs/gmm_vit_cifar10.py \
        [--batch_size=128] [--steps=10]

Every variant runs in a fresh process (XLA reads its flags once, at start-up) on the
trainer's own step (benchmark.train_rate: full augmentation, random pixels) and
reports train images/s, the share of the step spent dispatching from Python (n/a where
steps run inline, as with the step memory kept: benchmark.steps_run_inline), and the
memory the compiled step holds (inputs, outputs and temporaries, less donated buffers).

Variants:
- all on: the config as given (step memory kept mapped on CPUs where its
  cpu_keep_step_memory says so), XLA:CPU flags set (cpu_runtime.py), buffers donated,
  metrics fetched only at log time;
- attention core 'xla': every (B, H, N, N) array materialised and kept for the backward;
- attention core 'blockwise';
- no XLA:CPU flags;
- step memory returned each step: JAX's default asynchronous CPU dispatch and glibc's
  default allocator settings;
- no donation;
- host sync every step: metrics fetched after each step;
- bfloat16 compute (float32 parameters);
where a variant equals 'all on' (the core 'auto' resolves to) it is still run and shown.
"""

import json
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

from gmm_vit_jax import cli

VARIANTS = {
  'all on': {},
  "attention core 'xla'": {'implementation': 'xla'},
  "attention core 'blockwise'": {'implementation': 'blockwise'},
  'no XLA:CPU flags': {'cpu_flags': False},
  'step memory returned each step': {'keep_step_memory': False},
  'no donation': {'donate': False},
  'host sync every step': {'host_sync': True},
  'bfloat16 compute': {'dtype': 'bfloat16'},
}

config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
flags.DEFINE_integer('batch_size', 128, 'Global batch.')
flags.DEFINE_integer('steps', 10, 'Timed steps after warm-up.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_list(
  'variants',
  list(VARIANTS),
  'The variants to run, in order, from: '
  + ', '.join(VARIANTS)
  + '; the first is the baseline of "vs all on".',
)
flags.DEFINE_string('variant', None, 'Run one variant in this process and print it as JSON.')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def run_variant(name: str) -> dict:
  """Times one variant in this process; JAX must not have started yet."""
  lever = VARIANTS[name]
  from gmm_vit_jax import cpu_runtime

  if lever.get('cpu_flags', True):
    cpu_runtime.set_xla_flags()
  if lever.get('keep_step_memory', FLAGS.config.cpu_keep_step_memory):
    cpu_runtime.keep_step_memory()
  from gmm_vit_jax import sharding
  from gmm_vit_jax.benchmarks.speed import random_dataset, train_rate

  config = FLAGS.config.copy_and_resolve_references()
  config.batch_size = FLAGS.batch_size
  if 'implementation' in lever:
    config.model.attention.implementation = lever['implementation']
  if 'dtype' in lever:
    config.model.dtype = lever['dtype']
  mesh = sharding.make_mesh()
  images, labels = random_dataset(config, 4 * config.batch_size, mesh)
  result = train_rate(
    config,
    config.batch_size,
    FLAGS.steps,
    FLAGS.warmup,
    images,
    labels,
    mesh,
    donate=lever.get('donate', True),
    host_sync=lever.get('host_sync', False),
  )
  return dict(
    variant=name,
    images_per_s=result['images_per_s'],
    step_ms=result['step_ms'],
    dispatch_fraction=result['dispatch_fraction'],
    step_memory_bytes=result['step_memory_bytes'],
  )


def main(argv):
  del argv
  if FLAGS.variant:
    print(json.dumps(run_variant(FLAGS.variant)))
    return
  unknown = [name for name in FLAGS.variants if name not in VARIANTS]
  if unknown:
    raise app.UsageError(f'--variants: {unknown} are not variants; choose from {list(VARIANTS)}.')
  rows = []
  for name in FLAGS.variants:
    print(f'running: {name}', file=sys.stderr, flush=True)
    done = subprocess.run(
      [sys.executable, '-m', __spec__.name, *sys.argv[1:], f'--variant={name}'],
      capture_output=True,
      text=True,
      check=False,
    )
    if done.returncode:
      raise cli.child_failed(f'variant {name!r}', done)
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
  base = rows[0]['images_per_s']
  print(
    f'{FLAGS.config.model.name} (mask {FLAGS.config.model.mask.kind}), batch '
    f'{FLAGS.batch_size}, {FLAGS.steps} timed steps'
  )
  print(f'{"":30s}{"images/s":>10s}{"vs all on":>11s}{"dispatch":>10s}{"step MiB":>10s}')
  for row in rows:
    memory, dispatch = row['step_memory_bytes'], row['dispatch_fraction']
    print(
      f'{row["variant"]:30s}{row["images_per_s"]:10.1f}{row["images_per_s"] / base:11.2f}'
      f'{"n/a" if dispatch is None else f"{100 * dispatch:.2f}%":>10s}'
      f'{"n/a" if memory is None else f"{memory / 2**20:.2f}":>10s}'
    )


if __name__ == '__main__':
  cli.run_app(main)
