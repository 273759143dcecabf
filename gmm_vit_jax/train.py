"""Trains a model described by an ml-collections config.

    python -m gmm_vit_jax.train --config=configs/gmm_vit_cifar10.py --workdir=runs/gmm_vit_cifar10
    python -m gmm_vit_jax.train --config=configs/gmm_vit_cifar10.py:cifar100 --config.batch_size=256

(`python train.py ...` in the repository runs the same.) The config is a file path, from
any directory: the repository's configs/ or a file of your own (gmm_vit_jax/config_files.py
says how it finds its imports).

Rerunning the same command resumes from the workdir's newest good checkpoint. A config
that differs from the one stored in the workdir is refused, naming each changed field;
--allow_config_change=FIELD[,FIELD] goes on with new values that keep the model's shapes.

Exit codes: 0 the run is complete; 75 stopped by SIGTERM or Ctrl-C after saving a checkpoint
(rerun the same command to resume); 1 an error, printed as one line naming its cause and fix.

Several processes (hosts) train one model when each runs the same command with
--distributed; jax.distributed.initialize then finds the coordinator, the process count
and the process id itself on Cloud TPU pods, SLURM, Open MPI and Kubernetes. Elsewhere
name them (any of these flags implies --distributed):

    python -m gmm_vit_jax.train --config=... --workdir=SHARED_DIR --coordinator_address=HOST0:1234 \
        --num_processes=2 --process_id=0    # and --process_id=1 on the other host

The workdir must be one directory every process sees (a shared file system or a
gs:// bucket). Single-process runs need none of this.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gmm_vit_jax import cli, console, cpu_runtime, errors

# Before the loop's imports load TensorFlow (clu's writers, tfds).
console.import_tensorflow_quietly(sys.argv)
from gmm_vit_jax.training.loop import train_and_evaluate  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string(
  'workdir', None, 'Where checkpoints, logs and the summary go (default: runs/<config file name>).'
)
flags.DEFINE_list(
  'allow_config_change',
  [],
  'Config fields that may differ from the ones '
  'stored in the workdir when resuming (e.g. epochs,optimizer.learning_rate).',
)
flags.DEFINE_bool(
  'distributed',
  False,
  'Join a multi-process run through jax.distributed.initialize(), which detects the cluster.',
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0 in a multi-process run (implies --distributed).',
)
flags.DEFINE_integer(
  'num_processes', None, 'Number of processes of a multi-process run (implies --distributed).'
)
flags.DEFINE_integer(
  'process_id', None, "This process's index, 0 to num_processes - 1 (implies --distributed)."
)
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def initialize_processes(distributed: bool, **explicit) -> None:
  """Connects the processes of a multi-process run before JAX touches a device.

  explicit: coordinator_address, num_processes, process_id; those left None are
  detected from the cluster environment. Nothing happens unless `distributed` or one
  of them is set, so a single-process run never starts the distributed service.
  """
  explicit = {k: v for k, v in explicit.items() if v is not None}
  if not (distributed or explicit):
    return
  try:
    jax.distributed.initialize(**explicit)
  except ValueError as e:
    raise errors.UserError(
      f'jax.distributed.initialize failed: {e} Outside Cloud TPU pods, SLURM, '
      'Open MPI and Kubernetes pass --coordinator_address, --num_processes and '
      '--process_id.'
    ) from e
  logging.info(
    'Process %d of %d; %d local and %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_jax()
  cpu_runtime.apply(FLAGS.config)
  initialize_processes(
    FLAGS.distributed,
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
  )
  config_file = config_flags.get_config_filename(FLAGS['config'])
  workdir = FLAGS.workdir or os.path.join(
    'runs', os.path.splitext(os.path.basename(config_file))[0]
  )
  summary = train_and_evaluate(
    FLAGS.config, workdir, allow_config_change=tuple(FLAGS.allow_config_change)
  )
  return errors.EXIT_OK if summary['completed'] else errors.EXIT_STOPPED


def run() -> None:
  """The command: parses sys.argv, trains, exits with the code main returns."""
  logging.set_verbosity(logging.INFO)
  cli.run_app(main)


if __name__ == '__main__':
  run()
