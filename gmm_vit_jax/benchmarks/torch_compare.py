"""Training speed of the Flax model against a PyTorch model of the same architecture.

    python -m gmm_vit_jax.benchmarks.torch_compare --config=configs/gmm_vit_cifar10.py \
        [--batch_size=128] [--steps=10] [--repeats=3] [--dtype=float32] [--torch_compile]

Both sides run a full training step (forward, backward, AdamW, label-smoothed cross
entropy) on the same batch size and precision, on this machine's first accelerator
(CUDA for PyTorch) or its CPU, back to back. --dtype=bfloat16 runs the Flax model with
model.dtype='bfloat16' and the PyTorch one under torch.autocast; both keep float32
parameters. In float32 on a GPU, XLA lets matrix products use TF32, and PyTorch is set
to do the same (torch.backends.cuda.matmul.allow_tf32). The PyTorch
model is the reference-layout twin of gmm_vit_jax/torch_models (the same weights
load into the reference code), the Flax side is the trainer's own jitted step
(gmm_vit_jax/training/step.py) with augmentation off. After warm-up the sides take
turns, one timed window of `steps` steps each, `repeats` times; each reports the median
of its windows.
"""

import statistics
import time
from collections.abc import Callable

import jax
import torch
from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli, cpu_runtime, sharding
from gmm_vit_jax.benchmarks.cpu_info import cpu_description
from gmm_vit_jax.benchmarks.speed import NO_AUGMENTATION, random_dataset, time_steps
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.sampling import EpochSampler
from gmm_vit_jax.torch_models import build_torch_model
from gmm_vit_jax.training.optimizer import make_optimizer
from gmm_vit_jax.training.state import Metrics, create_train_state
from gmm_vit_jax.training.step import make_train_step

FLAGS = flags.FLAGS

WARMUP_STEPS = 3


def torch_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def torch_window(
  config, batch_size: int, compile_model: bool, dtype: str
) -> Callable[[int], float]:
  """A PyTorch training step; returns steps -> seconds those steps took."""
  info = dataset_info(config.dataset)
  torch.manual_seed(config.seed)
  device = torch_device()
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  model = build_torch_model(
    config.model,
    num_classes=info['num_classes'],
    image_size=info['image_size'],
    channels=info['channels'],
  ).to(device)
  model.train()
  o = config.optimizer
  optimizer = torch.optim.AdamW(
    model.parameters(),
    lr=o.learning_rate,
    betas=(o.b1, o.b2),
    eps=o.eps,
    weight_decay=o.weight_decay,
  )
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
  forward = torch.compile(model) if compile_model else model
  images = torch.randn(
    batch_size, info['channels'], info['image_size'], info['image_size'], device=device
  )
  labels = torch.randint(0, info['num_classes'], (batch_size,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()

  def window(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      step()
    synchronize(device)
    return time.perf_counter() - start

  return window


def flax_window(config, batch_size: int, dtype: str) -> Callable[[int], float]:
  """The trainer's jitted step; returns steps -> seconds those steps took."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  config.model.dtype = dtype
  config.augment.update(NO_AUGMENTATION)
  info = dataset_info(config.dataset)
  mesh = sharding.make_mesh()
  num = 4 * batch_size
  images, labels = random_dataset(config, num, mesh)
  tx = make_optimizer(config, steps_per_epoch=1000)
  graphdef, state = create_train_state(config, tx, sharding.replicated(mesh))
  train_step = make_train_step(graphdef, tx, config, info, out_sharding=sharding.replicated(mesh))
  sampler = EpochSampler(num, batch_size, 1, config.seed)
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  done = 0

  def window(steps: int) -> float:
    nonlocal state, metrics, done
    batches = [sampler.batch(done + i) for i in range(steps)]
    state, metrics, seconds, _ = time_steps(
      train_step, state, metrics, images, labels, batches, False, mesh
    )
    done += steps
    return seconds

  return window


def rates(
  windows: dict[str, Callable[[int], float]], batch_size: int, steps: int, repeats: int
) -> dict[str, float]:
  """Images/s of each side: the median of `repeats` windows, the sides taking turns.

  Taking turns, rather than timing one side after the other, spreads any change in the
  machine's load over both sides alike. Two untimed rounds come first: WARMUP_STEPS
  steps each, which compile and warm every side, then one step each, because a side's
  first window after the others have run may find its memory taken and fault in new
  pages (on CPU, 77,000 page faults a GMM-ViT step).
  """
  seconds = {name: [] for name in windows}
  for warmup in (WARMUP_STEPS, 1):
    for window in windows.values():
      window(warmup)
  for _ in range(repeats):
    for name, window in windows.items():
      seconds[name].append(window(steps))
  return {name: steps * batch_size / statistics.median(s) for name, s in seconds.items()}


def main(argv):
  del argv
  config = FLAGS.config
  cpu_runtime.apply(config)
  batch_size, dtype = FLAGS.batch_size, FLAGS.dtype
  windows = {
    'jax (jit)': flax_window(config, batch_size, dtype),
    'pytorch (eager)': torch_window(config, batch_size, False, dtype),
  }
  if FLAGS.torch_compile:
    windows['pytorch (torch.compile)'] = torch_window(config, batch_size, True, dtype)
  rows = list(rates(windows, batch_size, FLAGS.steps, FLAGS.repeats).items())
  device = jax.devices()[0]
  where = (
    torch.cuda.get_device_name()
    if torch_device().type == 'cuda'
    else f'cpu, {torch.get_num_threads()} threads'
  )
  if device.platform == 'cpu':
    print(f'CPU: {cpu_description()}')
  print(
    f'{config.model.name} (mask {config.model.mask.kind}, attention core '
    f'{config.model.attention.implementation}), batch {FLAGS.batch_size}, {FLAGS.dtype}; '
    f'jax {jax.__version__} on {device.platform} ({device.device_kind}), '
    f'torch {torch.__version__} on {where}'
  )
  print(f'{"":26s}{"train images/s":>16s}{"jax / this":>12s}')
  for name, rate in rows:
    print(f'{name:26s}{rate:16,.1f}{rows[0][1] / rate:12.2f}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size of both sides.')
  flags.DEFINE_integer('steps', 10, 'Steps per timed window.')
  flags.DEFINE_integer('repeats', 3, 'Timed windows; the median is reported.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute precision of both.')
  flags.DEFINE_bool('torch_compile', False, 'Also time the PyTorch model under torch.compile.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
