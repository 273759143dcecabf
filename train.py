"""Trains a model described by an ml-collections config.

    python train.py --config=configs/gmm_vit_cifar10.py --workdir=runs/gmm_vit_cifar10
    python train.py --config=configs/gmm_vit_cifar10.py:cifar100 --config.batch_size=256

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

import json
import logging as py_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

from gmm_vit_jax.training.loop import train_and_evaluate

config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and the summary go '
                    '(default: runs/<config file name>).')
flags.mark_flags_as_required(['config'])


class _QuietLibraries(py_logging.Filter):
  """Keeps checkpoint-library chatter below WARNING out of the console."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  workdir = flags.FLAGS.workdir or os.path.join(
      'runs', os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))[0])
  summary = train_and_evaluate(flags.FLAGS.config, workdir)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  app.run(main)
