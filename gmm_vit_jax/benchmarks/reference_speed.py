"""The project's GMM training step against the reference code's own models, on the CPU.

    python -m gmm_vit_jax.benchmarks.reference_speed --reference_dir=PATH \
        [--backbones=vit,swin,cait,pit,t2t] [--batch_size=128] [--steps=5] [--rounds=2] [--json]

PATH is a checkout of the reference code (CatworldLee/Gaussian-Mixture-Mask-Attention);
its models run from there, as its users run them, in the same Python, which needs what
they import (einops, and timm with a torchvision built for the installed torch).

Each side runs in a fresh process of its own (`--side=project`, `--side=reference`),
`rounds` times per backbone, the sides taking turns (project first in even rounds,
reference first in odd ones), both on the CPU:
- project: the trainer's jitted step (benchmarks/torch_compare.py's `flax_window`) on
  the --configs folder's `gmm_<backbone>_cifar10.py` with augmentation off, after
  cpu_runtime's CPU settings; one untimed call compiles, then WARMUP_STEPS untimed steps.
- reference: no JAX and none of the project's models. Its `create_model(32, 10, args)`
  with the defaults of its main.py and `--is_GMM` (REFERENCE_ARGS), its own label-smoothed
  loss, `torch.optim.AdamW` with main.py's learning rate and weight decay, `model.train()`,
  one fixed random batch and random labels, torch's default thread count; WARMUP_STEPS
  untimed steps.
Then each times one window of `steps` steps: images/s. A backbone the reference code
cannot build or run here is a row with its error, not a failure of the command.

It prints the CPU, the load average at start and end, the versions, torch's threads and
XLA_FLAGS, then per backbone the median images/s of each side over the rounds, their
ratio (project / reference, above 1: the project is faster) and each round's figures.
"""

import argparse
import importlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags

from gmm_vit_jax import cli, errors
from gmm_vit_jax.benchmarks.cpu_info import cpu_description
from gmm_vit_jax.published import BACKBONES

FLAGS = flags.FLAGS

SIDES = ('project', 'reference')
# Untimed steps before the timed window, on each side after the first call (which, on
# the project's side, compiles the step).
WARMUP_STEPS = 2
# CIFAR-10, the dataset of the configs compared.
IMAGE_SIZE, NUM_CLASSES = 32, 10
# What the reference's create_model reads, as its main.py's parser sets it when its
# README's GMM runs pass --is_GMM; channel, heads and depth are read (PiT sets them).
REFERENCE_ARGS = dict(
  sd=0.1, is_GMM=True, is_SLM=False, num_kernals=5, channel=None, heads=None, depth=None
)
# main.py's AdamW (--lr, --weight-decay defaults) and seed.
REFERENCE_LR, REFERENCE_WEIGHT_DECAY, REFERENCE_SEED = 1e-3, 5e-2, 0
REFERENCE_ENTRY = os.path.join('models', 'create_model.py')


def check_reference_dir(path: str) -> str:
  """The absolute path of a checkout of the reference code; a UserError for anything else."""
  if not os.path.isfile(os.path.join(path, REFERENCE_ENTRY)):
    what = 'no such folder' if not os.path.isdir(path) else f'no {REFERENCE_ENTRY} there'
    raise errors.UserError(
      f'--reference_dir={path}: {what}; give the folder of a checkout of the reference code '
      f'(the folder holding {REFERENCE_ENTRY}): git clone '
      'https://github.com/CatworldLee/Gaussian-Mixture-Mask-Attention and pass its folder.'
    )
  return os.path.abspath(path)


def check_backbones(names: list[str]) -> list[str]:
  unknown = [name for name in names if name not in BACKBONES]
  if not names or unknown:
    raise errors.UserError(
      f'--backbones={",".join(names)}: give some of {",".join(BACKBONES)}, comma-separated.'
    )
  return names


def project_side(configs: str, backbone: str, batch_size: int, steps: int) -> dict:
  """The trainer's step on the backbone's GMM config, timed in this process."""
  from gmm_vit_jax import cpu_runtime, reproduce

  config = reproduce.run_config(configs, backbone, 'gmm', 'cifar10')
  cpu_runtime.apply(config)
  import jax

  from gmm_vit_jax.benchmarks.torch_compare import flax_window

  window = flax_window(config, batch_size, 'float32')
  window(1)
  window(WARMUP_STEPS)
  seconds = window(steps)
  return dict(
    side='project',
    backbone=backbone,
    images_per_s=steps * batch_size / seconds,
    jax=jax.__version__,
    xla_flags=os.environ.get('XLA_FLAGS', ''),
  )


def reference_window(reference_dir: str, backbone: str, batch_size: int):
  """The reference code's training step on one fixed batch; returns steps -> seconds."""
  import torch

  # First on the path: the reference's `models` and `utils` packages, as from its folder.
  sys.path.insert(0, reference_dir)
  create_model = importlib.import_module('models.create_model').create_model
  losses = importlib.import_module('utils.losses')
  torch.manual_seed(REFERENCE_SEED)
  args = argparse.Namespace(model=backbone, **REFERENCE_ARGS)
  model = create_model(IMAGE_SIZE, NUM_CLASSES, args)
  model.train()
  criterion = losses.LabelSmoothingCrossEntropy()
  optimizer = torch.optim.AdamW(
    model.parameters(), lr=REFERENCE_LR, weight_decay=REFERENCE_WEIGHT_DECAY
  )
  images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
  labels = torch.randint(0, NUM_CLASSES, (batch_size,))

  def window(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      # main.py's order: the loss, then zero_grad, backward and the update.
      loss = criterion(model(images), labels)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    return time.perf_counter() - start

  return window


def reference_error(e: Exception) -> str:
  """One line for a backbone the reference code cannot build or train here."""
  text = ' '.join(f'{type(e).__name__}: {e}'.split())
  if isinstance(e, ImportError) or 'torchvision' in text:
    text += (
      '; the reference code imports einops and timm (and timm a torchvision built for '
      'this torch): install them into this Python'
    )
  return text


def reference_side(reference_dir: str, backbone: str, batch_size: int, steps: int) -> dict:
  """The reference code's step timed in this process, which never imports JAX."""
  import torch

  result = dict(
    side='reference',
    backbone=backbone,
    torch=torch.__version__,
    torch_threads=torch.get_num_threads(),
  )
  try:
    window = reference_window(reference_dir, backbone, batch_size)
    window(WARMUP_STEPS)
    seconds = window(steps)
  except Exception as e:  # pylint: disable=broad-except
    return dict(result, error=reference_error(e))
  return dict(result, images_per_s=steps * batch_size / seconds)


def run_side(side: str, backbone: str) -> dict:
  """One side, one backbone, timed in a fresh process; its JSON line."""
  command = [
    sys.executable,
    '-m',
    __spec__.name,
    f'--side={side}',
    f'--backbones={backbone}',
    f'--reference_dir={FLAGS.reference_dir}',
    f'--configs={FLAGS.configs}',
    f'--batch_size={FLAGS.batch_size}',
    f'--steps={FLAGS.steps}',
  ]
  # Both sides on the CPU, whatever accelerator the machine has.
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
  lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
  if done.returncode or not lines:
    raise cli.child_failed(f'the {side} side of {backbone}', done)
  return json.loads(lines[-1])


def compare(backbone: str, rounds: int) -> tuple[dict, dict]:
  """(row, {side: its first result}): `rounds` rounds, the sides taking turns."""
  rates = {side: [] for side in SIDES}
  failed, first = {}, {}
  for r in range(rounds):
    for side in SIDES if r % 2 == 0 else SIDES[::-1]:
      if side in failed:
        continue
      result = run_side(side, backbone)
      first.setdefault(side, result)
      if 'error' in result:
        failed[side] = result['error']
      else:
        rates[side].append(result['images_per_s'])
  medians = {side: statistics.median(r) if r else None for side, r in rates.items()}
  ratio = medians['project'] / medians['reference'] if None not in medians.values() else None
  row = dict(
    backbone=backbone,
    **medians,
    ratio=ratio,
    project_rounds=rates['project'],
    reference_rounds=rates['reference'],
    errors=failed,
  )
  return row, first


def report(result: dict) -> list[str]:
  lines = [
    f'CPU: {result["cpu"]}',
    f'load average {result["load_average"][0]:.2f} at start, '
    f'{result["load_average"][1]:.2f} at end',
    f'project: jax {result["jax"]}, XLA_FLAGS={result["xla_flags"]}; reference: torch '
    f'{result["torch"]}, {result["torch_threads"]} threads',
    f'GMM configs, CIFAR-10 shapes, batch {result["batch_size"]}, float32, on the CPU; each '
    f"side in a fresh process per round, {WARMUP_STEPS} untimed steps (the project's after "
    f'compiling) then {result["steps"]} timed; median of {result["rounds"]} rounds, the sides '
    'taking turns',
    f'{"backbone":10s}{"project img/s":>15s}{"reference img/s":>17s}'
    f'{"project / reference":>21s}   rounds (project/reference)',
  ]

  def cell(value, width, spec):
    return f'{"-" if value is None else format(value, spec):>{width}s}'

  for row in result['rows']:
    rounds = [
      f'{cell(p, 0, ",.1f")}/{cell(q, 0, ",.1f")}'
      for p, q in itertools.zip_longest(row['project_rounds'], row['reference_rounds'])
    ]
    notes = [f'{side} failed: {error}' for side, error in row['errors'].items()]
    lines.append(
      f'{row["backbone"]:10s}{cell(row["project"], 15, ",.1f")}'
      f'{cell(row["reference"], 17, ",.1f")}{cell(row["ratio"], 21, ".2f")}   '
      + ' '.join(rounds + notes)
    )
  return lines


def main(argv):
  del argv
  reference_dir = check_reference_dir(FLAGS.reference_dir)
  backbones = check_backbones(FLAGS.backbones)
  if FLAGS.side:
    side = (
      project_side(FLAGS.configs, backbones[0], FLAGS.batch_size, FLAGS.steps)
      if FLAGS.side == 'project'
      else reference_side(reference_dir, backbones[0], FLAGS.batch_size, FLAGS.steps)
    )
    print(json.dumps(side))
    return
  load_start = os.getloadavg()[0]
  rows, first = [], {}
  for backbone in backbones:
    row, sides = compare(backbone, FLAGS.rounds)
    rows.append(row)
    for side, side_result in sides.items():
      first.setdefault(side, side_result)
  result = dict(
    cpu=cpu_description(),
    load_average=[load_start, os.getloadavg()[0]],
    jax=first['project']['jax'],
    xla_flags=first['project']['xla_flags'],
    torch=first['reference']['torch'],
    torch_threads=first['reference']['torch_threads'],
    batch_size=FLAGS.batch_size,
    steps=FLAGS.steps,
    rounds=FLAGS.rounds,
    rows=rows,
  )
  print(json.dumps(result) if FLAGS.json else '\n'.join(report(result)))


if __name__ == '__main__':
  flags.DEFINE_string(
    'reference_dir', None, 'A checkout of the reference code (its models/ and utils/).'
  )
  flags.DEFINE_list('backbones', list(BACKBONES), 'Backbones to compare, in this order.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size of both sides.', lower_bound=1)
  flags.DEFINE_integer('steps', 5, 'Timed steps per window.', lower_bound=1)
  flags.DEFINE_integer('rounds', 2, 'Fresh processes per side and backbone.', lower_bound=1)
  flags.DEFINE_string(
    'configs', 'configs', "The folder of the project's gmm_<backbone>_cifar10.py configs."
  )
  flags.DEFINE_bool('json', False, 'Print one JSON line instead of the table.')
  flags.DEFINE_enum('side', None, SIDES, 'Time one side of one backbone here, as JSON.')
  flags.mark_flags_as_required(['reference_dir'])
  cli.run_app(main)
