"""A quiet console for the command-line tools (train.py, predict, export, complexity).

By default the console leaves out notices a user cannot act on:
- TensorFlow's C++ start-up notices (oneDNN's, twice). TensorFlow 2.21 writes them through
  absl's C++ logging before that is initialised, which TF_CPP_MIN_LOG_LEVEL no longer
  reaches, so TensorFlow is imported once with file descriptor 2 pointed at /dev/null.
  train.py does that before anything else imports it (clu's writers, tfds), when flags
  are not parsed yet, so --verbosity is read from the command line itself.
- the checkpoint library's INFO records (every save and restore logs a dozen lines).
- absl's record prefix (severity, date, microseconds, thread id, file and line): each
  console line starts with the time alone, and warnings say so in words.
- JAX's probe of backends that cannot exist here ("Unable to initialize backend 'tpu'"):
  where no accelerator plugin is installed (cpu_runtime.cpu_only), JAX is told to start
  the CPU backend alone. With a plugin installed, or JAX_PLATFORMS set, nothing changes.

`--verbosity=1` (absl's flag; also -v 1) brings all of it back, together with what the
trainer keeps in files by default (the parameter table, the hyperparameters, every metric
as a log line).
"""

import contextlib
import importlib
import logging as py_logging
import os
import sys
from collections.abc import Sequence

import jax
from absl import logging

from gmm_vit_jax import cpu_runtime

VERBOSITY_FLAGS = ('--verbosity', '-verbosity', '--v', '-v')
VERBOSE = 1  # absl's DEBUG; the tools run at INFO (0) or quieter by default.


def argv_verbosity(argv: Sequence[str]) -> int:
  """The absl verbosity a command line asks for (0 when it names none), read before absl
  parses the flags: --verbosity=N, --verbosity N, -v=N, -v N."""
  level = 0
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition('=')
    if name not in VERBOSITY_FLAGS:
      continue
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) else ''
    try:
      level = int(value)
    except ValueError:
      level = {'debug': VERBOSE}.get(value.lower(), 0)
  return level


def verbose() -> bool:
  """Whether absl's verbosity (after flag parsing) asks for everything."""
  return logging.get_verbosity() >= VERBOSE


@contextlib.contextmanager
def _native_stderr_discarded():
  """Points file descriptor 2 (what C++ code writes to) at /dev/null while inside."""
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def import_tensorflow_quietly(argv: Sequence[str]) -> None:
  """Imports TensorFlow without its C++ start-up notices, unless the command line asks for
  verbosity. An import that fails still raises, with its Python traceback."""
  if argv_verbosity(argv) >= VERBOSE or 'tensorflow' in sys.modules:
    return
  with _native_stderr_discarded():
    importlib.import_module('tensorflow')


class _QuietCheckpointLibrary(py_logging.Filter):
  """Keeps orbax's records below WARNING off the console."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


_QUIET_CHECKPOINT_LIBRARY = _QuietCheckpointLibrary()


class ShortPrefix(py_logging.Formatter):
  """'09:42:07  message', and '09:42:07  warning: message' from WARNING up."""

  def __init__(self):
    super().__init__('%(asctime)s  %(message)s', datefmt='%H:%M:%S')

  def formatMessage(self, record: py_logging.LogRecord) -> str:
    text = super().formatMessage(record)
    if record.levelno < py_logging.WARNING:
      return text
    time_text, _, message = text.partition('  ')
    return f'{time_text}  {record.levelname.lower()}: {message}'


def quiet_jax() -> None:
  """Starts only the CPU backend where nothing else can exist, keeps the checkpoint
  library's INFO records off the console and gives records the short prefix, unless
  verbose. Call it after flag parsing and before anything touches jax.devices()."""
  if verbose():
    return
  logging.get_absl_handler().addFilter(_QUIET_CHECKPOINT_LIBRARY)
  logging.get_absl_handler().setFormatter(ShortPrefix())
  if cpu_runtime.cpu_only(os.environ):
    jax.config.update('jax_platforms', 'cpu')
