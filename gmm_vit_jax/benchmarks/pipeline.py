"""Training speed fed by each input pipeline, and the streaming pipeline's own rate.

    python -m gmm_vit_jax.benchmarks.pipeline --config=configs/quickstart.py [--steps=N] \
        [--grain_workers=N] [--json]

On the config's real dataset it reports:
- train images/s of the trainer's own step (gmm_vit_jax/training/step.py) fed by the
  'device' pipeline (resident splits, rows by index) and by the 'grain' pipeline
  (examples read and batched on the host, placed on the devices ahead of the step);
- grain's input-only rate: host batches per second times the batch size, no model and no
  device, and the same with the placement on the devices; its ratio to the model's train
  rate says whether the input could starve the step (it should be at least 3).
"""

import json
import time

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli, cpu_runtime, sharding
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.pipeline import make_pipeline
from gmm_vit_jax.training.optimizer import make_optimizer
from gmm_vit_jax.training.state import Metrics, create_train_state
from gmm_vit_jax.training.step import make_train_step


def _pipeline(config: ml_collections.ConfigDict, name: str, mesh):
  config = config.copy_and_resolve_references()
  config.dataset.pipeline = name
  return make_pipeline(config, mesh)


def train_rate(config: ml_collections.ConfigDict, name: str, steps: int, warmup: int) -> float:
  """Train images/s of the trainer's step fed by pipeline `name`, after `warmup` steps
  (compilation included) untimed."""
  mesh = sharding.make_mesh()
  pipeline = _pipeline(config, name, mesh)
  replicated = sharding.replicated(mesh)
  tx = make_optimizer(config, pipeline.steps_per_epoch)
  graphdef, state = create_train_state(config, tx, replicated)
  train_step = make_train_step(
    graphdef, tx, config, dataset_info(config.dataset), out_sharding=replicated
  )
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  batches = pipeline.train_batches(0, warmup + steps)
  for _ in range(warmup):
    state, metrics = train_step(state, metrics, *next(batches), False)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches:
    state, metrics = train_step(state, metrics, *batch, False)
  jax.block_until_ready(metrics)
  return steps * config.batch_size / (time.perf_counter() - start)


def input_rates(config: ml_collections.ConfigDict, steps: int) -> dict:
  """grain's images/s: host batches only, and placed on the devices."""
  mesh = sharding.make_mesh()
  pipeline = _pipeline(config, 'grain', mesh)
  rates = {}
  for key, batches in (
    ('host', pipeline.host_train_batches(0, steps + 1)),
    ('on_devices', pipeline.train_batches(0, steps + 1)),
  ):
    batches = iter(batches)
    jax.block_until_ready(next(batches))  # Starts the readers (and workers).
    start = time.perf_counter()
    for batch in batches:
      jax.block_until_ready(batch)
    rates[key] = steps * config.batch_size / (time.perf_counter() - start)
  return rates


def benchmark(config: ml_collections.ConfigDict, *, steps: int, warmup: int) -> dict:
  device_rate = train_rate(config, 'device', steps, warmup)
  grain_rate = train_rate(config, 'grain', steps, warmup)
  inputs = input_rates(config, steps)
  return dict(
    dataset=config.dataset.name,
    model=config.model.name,
    batch_size=config.batch_size,
    grain_workers=config.dataset.grain_workers,
    grain_threads=config.dataset.grain_threads,
    devices=jax.device_count(),
    platform=jax.devices()[0].platform,
    device_train_images_per_s=device_rate,
    grain_train_images_per_s=grain_rate,
    grain_input_images_per_s=inputs['host'],
    grain_input_on_devices_images_per_s=inputs['on_devices'],
    input_over_train=inputs['host'] / max(device_rate, grain_rate),
  )


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  config = FLAGS.config
  cpu_runtime.apply(config)
  if FLAGS.grain_workers is not None:
    config.dataset.grain_workers = FLAGS.grain_workers
  result = benchmark(config, steps=FLAGS.steps, warmup=FLAGS.warmup)
  if FLAGS.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    print(f'{key:38s} {f"{value:,.3f}" if isinstance(value, float) else value}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('steps', 60, 'Timed steps after warm-up.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps, compilation included.')
  flags.DEFINE_integer(
    'grain_workers', None, "grain's worker processes (default: the config's dataset.grain_workers)."
  )
  flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
