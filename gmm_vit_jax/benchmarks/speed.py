"""Training and evaluation speed of a config's model on this machine's devices.

    python -m gmm_vit_jax.benchmarks.speed --config=configs/gmm_vit_cifar10.py [--batch_size=N] \
        [--steps=N] [--json]

It runs the trainer's own jitted steps (gmm_vit_jax/training/step.py) on a
device-resident uint8 dataset of the config's image shape filled with random pixels,
so it needs no download. It reports:
- train images/s with the config's augmentation, and without any ("synthetic": the
  same step fed the raw images), so the augmentation's share of the step shows;
- eval images/s, step time, compile time, the fraction of the step spent dispatching
  from Python (None where steps run inline: steps_run_inline), peak device memory where
  the backend reports it;
- model FLOPs utilisation: XLA's FLOP count of the compiled step times the step rate,
  over the device's peak (PEAK_FLOPS), where the device is known.
"""

import json
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli, cpu_runtime, sharding
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.sampling import EpochSampler, eval_batches
from gmm_vit_jax.models import compute_dtype
from gmm_vit_jax.training.optimizer import make_optimizer
from gmm_vit_jax.training.state import Metrics, create_train_state
from gmm_vit_jax.training.step import make_eval_step, make_train_step

# Dense peak FLOP/s per chip from the vendors' data sheets: (bf16/fp16 matrix, fp32).
# NVIDIA: H100 SXM5 and H200 989.4 / 66.9 TFLOP/s, H100 PCIe 756 / 51, A100 312 / 19.5,
# V100 SXM2 125 / 15.7, L4 121 / 30.3, T4 65 / 8.1. Google Cloud TPU docs, bf16 per chip:
# v2 45, v3 123, v4 275, v5e 197, v5p 459, v6e (Trillium) 918; fp32 runs through bf16
# passes on TPUs, so its peak is not listed.
PEAK_FLOPS = {
  'H100 PCIe': (756e12, 51e12),
  'H100': (989.4e12, 66.9e12),
  'H200': (989.4e12, 66.9e12),
  'A100': (312e12, 19.5e12),
  'V100': (125e12, 15.7e12),
  'L4': (121e12, 30.3e12),
  'T4': (65e12, 8.1e12),
  'TPU v2': (45e12, None),
  'TPU v3': (123e12, None),
  'TPU v4': (275e12, None),
  'TPU v5 lite': (197e12, None),
  'TPU v5e': (197e12, None),
  'TPU v5p': (459e12, None),
  'TPU v5': (459e12, None),
  'TPU v6 lite': (918e12, None),
  'TPU v6e': (918e12, None),
}
NO_AUGMENTATION = dict(
  flip=False, crop_padding=0, autoaugment='none', erasing_prob=0.0, mix_prob=0.0
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The device's peak FLOP/s for the model's compute dtype; None when unknown."""
  for name, (matrix, fp32) in PEAK_FLOPS.items():
    if name in device_kind:
      return matrix if dtype == 'bfloat16' else fp32
  return None


def time_steps(
  train_step, state, metrics, images, labels, batches, select: bool, mesh, host_sync: bool = False
):
  """Runs every batch; returns (state, metrics, seconds, seconds spent in Python calls).

  host_sync: fetch the metrics after every step, as a loop that logs each step would;
    the trainer fetches them only at log time.
  """
  dispatch = 0.0
  start = time.perf_counter()
  for index in batches:
    t = time.perf_counter()
    state, metrics = train_step(
      state, metrics, images, labels, sharding.global_batch(index, mesh), select
    )
    dispatch += time.perf_counter() - t
    if host_sync:
      jax.device_get(metrics)
  jax.block_until_ready(metrics)
  return state, metrics, time.perf_counter() - start, dispatch


def random_dataset(config: ml_collections.ConfigDict, num: int, mesh):
  """`num` random uint8 images of the config's dataset shape and random int32 labels,
  replicated over the mesh: a stand-in dataset that needs no download."""
  info = dataset_info(config.dataset)
  rng = np.random.default_rng(config.seed)
  shape = (num, info['image_size'], info['image_size'], info['channels'])
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  labels = rng.integers(0, info['num_classes'], num).astype(np.int32)
  return sharding.put_replicated(images, mesh), sharding.put_replicated(labels, mesh)


def train_rate(
  config: ml_collections.ConfigDict,
  batch_size: int,
  steps: int,
  warmup: int,
  images,
  labels,
  mesh,
  *,
  donate: bool = True,
  host_sync: bool = False,
) -> dict:
  """The trainer's step timed; `donate` and `host_sync` switch levers off for comparison."""
  info = dataset_info(config.dataset)
  replicated = sharding.replicated(mesh)
  tx = make_optimizer(config, steps_per_epoch=1000)
  graphdef, state = create_train_state(config, tx, replicated)
  train_step = make_train_step(graphdef, tx, config, info, out_sharding=replicated, donate=donate)
  sampler = EpochSampler(labels.shape[0], batch_size, 1, config.seed)
  select = config.patch_selection.kind != 'none'
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  first = sharding.global_batch(sampler.batch(0), mesh)
  start = time.perf_counter()
  compiled = train_step.lower(state, metrics, images, labels, first, select).compile()
  compile_s = time.perf_counter() - start
  flops = (compiled.cost_analysis() or {}).get('flops')
  memory = compiled.memory_analysis()
  state, metrics, _, _ = time_steps(
    train_step,
    state,
    metrics,
    images,
    labels,
    [sampler.batch(i) for i in range(warmup)],
    select,
    mesh,
  )
  state, metrics, seconds, dispatch = time_steps(
    train_step,
    state,
    metrics,
    images,
    labels,
    [sampler.batch(warmup + i) for i in range(steps)],
    select,
    mesh,
    host_sync,
  )
  return dict(
    state=state,
    graphdef=graphdef,
    images_per_s=steps * batch_size / seconds,
    step_ms=1e3 * seconds / steps,
    compile_s=compile_s,
    flops_per_step=flops,
    dispatch_fraction=None if steps_run_inline() else dispatch / seconds,
    step_memory_bytes=step_memory(memory),
  )


def steps_run_inline() -> bool:
  """Whether a jitted call returns only once its computation is done, as on CPUs with
  JAX's asynchronous dispatch off (cpu_runtime.keep_step_memory). The time spent in the
  call is then the whole step, not its dispatch, so no dispatch share is reported."""
  return jax.devices()[0].platform == 'cpu' and not jax.config.read('jax_cpu_enable_async_dispatch')


def step_memory(memory) -> int | None:
  """Bytes the compiled step holds at once: its inputs, outputs and temporaries, less the
  outputs written into donated inputs; None where the backend does not say."""
  if memory is None:
    return None
  return (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )


def eval_rate(graphdef, state, config, images, labels, mesh, repeats: int = 3) -> float:
  info = dataset_info(config.dataset)
  eval_step = make_eval_step(
    graphdef, info, out_sharding=sharding.replicated(mesh), model_dtype=config.model.dtype
  )
  batches = [
    (sharding.global_batch(i, mesh), sharding.global_batch(w, mesh))
    for i, w in eval_batches(labels.shape[0], config.eval_batch_size)
  ]
  run = lambda m: [
    m := eval_step(state.params, state.buffers, m, images, labels, i, w) for i, w in batches
  ][-1]
  jax.block_until_ready(run(sharding.put_replicated(Metrics.zeros(), mesh)))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(run(sharding.put_replicated(Metrics.zeros(), mesh)))
  return repeats * len(batches) * config.eval_batch_size / (time.perf_counter() - start)


def benchmark(
  config: ml_collections.ConfigDict, *, batch_size: int | None, steps: int, warmup: int
) -> dict:
  config = config.copy_and_resolve_references()
  if batch_size:
    config.batch_size = batch_size
  mesh = sharding.make_mesh()
  sharding.check_batch_size('batch_size', config.batch_size, mesh)
  images, labels = random_dataset(config, max(4 * config.batch_size, config.eval_batch_size), mesh)
  augmented = train_rate(config, config.batch_size, steps, warmup, images, labels, mesh)
  synthetic_config = config.copy_and_resolve_references()
  synthetic_config.augment.update(NO_AUGMENTATION)
  synthetic = train_rate(synthetic_config, config.batch_size, steps, warmup, images, labels, mesh)
  device = jax.devices()[0]
  dtype = compute_dtype(config.model.dtype)
  peak = peak_flops(device.device_kind, dtype)
  memory = (device.memory_stats() or {}) if hasattr(device, 'memory_stats') else {}
  flops = augmented['flops_per_step']
  return dict(
    model=config.model.name,
    mask=config.model.mask.kind,
    dtype=dtype,
    batch_size=config.batch_size,
    devices=jax.device_count(),
    device=device.device_kind,
    platform=device.platform,
    train_images_per_s=augmented['images_per_s'],
    synthetic_train_images_per_s=synthetic['images_per_s'],
    augmented_over_synthetic=augmented['images_per_s'] / synthetic['images_per_s'],
    eval_images_per_s=eval_rate(
      augmented['graphdef'], augmented['state'], config, images, labels, mesh
    ),
    step_ms=augmented['step_ms'],
    compile_s=augmented['compile_s'],
    dispatch_fraction=augmented['dispatch_fraction'],
    step_memory_bytes=augmented['step_memory_bytes'],
    flops_per_step=flops,
    mfu=(
      flops * augmented['images_per_s'] / config.batch_size / (peak * jax.device_count())
      if peak and flops
      else None
    ),
    peak_memory_bytes=memory.get('peak_bytes_in_use'),
  )


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  cpu_runtime.apply(FLAGS.config)
  result = benchmark(
    FLAGS.config, batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup
  )
  if FLAGS.json:
    print(json.dumps(result))
    return
  for key, value in result.items():
    shown = 'n/a' if value is None else (f'{value:,.3f}' if isinstance(value, float) else value)
    print(f'{key:30s} {shown}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('batch_size', None, "Global batch (default: the config's).")
  flags.DEFINE_integer('steps', 20, 'Timed steps after warm-up.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')
  flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
