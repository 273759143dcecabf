"""XLA compiler options against the default, compiled side by side and timed step by step.

    python -m gmm_vit_jax.benchmarks.xla_options --config=configs/gmm_vit_cifar10.py \
        --options=xla_cpu_prefer_vector_width=512 --options=xla_cpu_use_onednn=true \
        [--batch_size=128] [--rounds=8]

Each --options (comma-separated name=value pairs of XLA's debug options, as in XLA_FLAGS
without the dashes) compiles the trainer's step (augmentation off) once more, in this
one process, next to the default compilation. The variants then take turns, one step
each, `rounds` times (every other round in reverse order), so a change in the machine's
load falls on all of them alike: on a shared machine, timings of flags set in separate
processes differ by more than the flags do. It prints each variant's median images/s,
its ratio to the default, and the CPU it ran on.
"""

import json
import os
import statistics
import time

from absl import flags
from ml_collections import config_flags

from gmm_vit_jax import cli, errors
from gmm_vit_jax.benchmarks.cpu_info import cpu_description

FLAGS = flags.FLAGS


def parse_options(text: str) -> dict:
  """'a=true,b=512,c=x' -> {'a': True, 'b': 512, 'c': 'x'}, as XLA's option types want."""
  options = {}
  for pair in filter(None, text.split(',')):
    name, sep, value = pair.partition('=')
    if not sep:
      raise errors.UserError(
        f'--options: {pair!r} is not name=value; write e.g. '
        '--options=xla_cpu_prefer_vector_width=512.'
      )
    lowered = value.lower()
    options[name.strip()] = (
      {'true': True, 'false': False}[lowered]
      if lowered in ('true', 'false')
      else int(value)
      if value.lstrip('-').isdigit()
      else value
    )
  return options


def take_turns(steps: dict, rounds: int) -> dict[str, list[float]]:
  """{name: step() -> None}: seconds of each call, the names taking turns, every other
  round in reverse order so that none always runs first."""
  seconds = {name: [] for name in steps}
  names = list(steps)
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      steps[name]()
      seconds[name].append(time.perf_counter() - start)
  return seconds


def main(argv):
  del argv
  config = FLAGS.config
  from gmm_vit_jax import cpu_runtime

  cpu_runtime.apply(config)
  import jax

  from gmm_vit_jax import sharding
  from gmm_vit_jax.benchmarks.speed import NO_AUGMENTATION, random_dataset
  from gmm_vit_jax.data.info import dataset_info
  from gmm_vit_jax.data.sampling import EpochSampler
  from gmm_vit_jax.training.optimizer import make_optimizer
  from gmm_vit_jax.training.state import Metrics, create_train_state
  from gmm_vit_jax.training.step import make_train_step

  config = config.copy_and_resolve_references()
  config.batch_size = FLAGS.batch_size
  config.augment.update(NO_AUGMENTATION)
  info = dataset_info(config.dataset)
  mesh = sharding.make_mesh()
  images, labels = random_dataset(config, 2 * FLAGS.batch_size, mesh)
  tx = make_optimizer(config, steps_per_epoch=1000)
  graphdef, state = create_train_state(config, tx, sharding.replicated(mesh))
  train_step = make_train_step(graphdef, tx, config, info, out_sharding=sharding.replicated(mesh))
  index = sharding.global_batch(
    EpochSampler(images.shape[0], FLAGS.batch_size, 1, config.seed).batch(0), mesh
  )
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  lowered = train_step.lower(state, metrics, images, labels, index, False)
  variants = {'default': {}, **{text: parse_options(text) for text in FLAGS.options}}
  compiled = {
    name: lowered.compile(compiler_options=options or None) for name, options in variants.items()
  }
  carried = [state, metrics]

  def runner(executable):
    def step():
      carried[:] = executable(*carried, images, labels, index)
      jax.block_until_ready(carried[1])

    return step

  steps = {name: runner(executable) for name, executable in compiled.items()}
  take_turns(steps, 1)
  seconds = take_turns(steps, FLAGS.rounds)
  base = statistics.median(seconds['default'])
  rows = [
    dict(
      variant=name,
      images_per_s=FLAGS.batch_size / statistics.median(s),
      vs_default=base / statistics.median(s),
    )
    for name, s in seconds.items()
  ]
  if FLAGS.json:
    for row in rows:
      print(json.dumps(row))
    return
  print(f'CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f}')
  print(
    f'{config.model.name} (mask {config.model.mask.kind}), batch {FLAGS.batch_size}, '
    f'float32, {FLAGS.rounds} steps per variant taking turns; '
    f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")}'
  )
  print(f'{"":52s}{"images/s":>10s}{"vs default":>12s}')
  for row in rows:
    print(f'{row["variant"][:52]:52s}{row["images_per_s"]:10,.1f}{row["vs_default"]:12.2f}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_integer('batch_size', 128, 'Global batch.')
  flags.DEFINE_integer('rounds', 8, 'Timed steps per variant, the variants taking turns.')
  flags.DEFINE_multi_string('options', [], 'name=value[,name=value...]: one variant each.')
  flags.DEFINE_bool('json', False, 'Print one JSON line per variant instead of a table.')
  flags.mark_flags_as_required(['config'])
  cli.run_app(main)
