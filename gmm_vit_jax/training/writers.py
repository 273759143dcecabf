"""Where a run's metrics and parameter table go: TensorBoard event files and the workdir;
the log gets them only when asked.

clu's TensorFlow writer stores scalars as TF2 tensor summaries, which TensorBoard's web
page shows but its EventAccumulator (and tools built on it: tbparse, pandas exports) files
under tensors. Here scalars are written as classic `simple_value` scalars instead.

TensorFlow's own file systems know gs:// but none of the other URLs, nor a local
emulator: for a workdir URL the event files are written to a local temporary folder and
copied to the workdir with the first scalars written COPY_EVERY_S seconds after the last
copy, and at every flush (the end of the run).
"""

import atexit
import logging
import os
import shutil
import tempfile
import time

import jax
import tensorflow as tf
from clu import metric_writers, parameter_overview

from gmm_vit_jax import storage

COPY_EVERY_S = 30.0


class ScalarSummaryWriter(metric_writers.SummaryWriter):
  """clu's SummaryWriter, with scalars written as `Summary.Value.simple_value`."""

  def write_scalars(self, step, scalars):
    summary = tf.compat.v1.Summary(
      value=[
        tf.compat.v1.Summary.Value(tag=key, simple_value=float(value))
        for key, value in scalars.items()
      ]
    )
    with self._summary_writer.as_default():
      tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


class CopiedSummaryWriter(ScalarSummaryWriter):
  """A ScalarSummaryWriter whose files are written locally and copied to a workdir URL."""

  def __init__(self, workdir: str):
    self._local = tempfile.mkdtemp(prefix='gmm_vit_jax_events_')
    self._workdir = workdir
    self._copied = time.monotonic()
    # The loop flushes its writers but leaves closing them to the end of the process.
    atexit.register(shutil.rmtree, self._local, ignore_errors=True)
    super().__init__(self._local)

  def _copy(self) -> None:
    for name in os.listdir(self._local):
      with open(os.path.join(self._local, name), 'rb') as f:
        storage.write_atomically(storage.join(self._workdir, name), f.read())
    self._copied = time.monotonic()

  def write_scalars(self, step, scalars):
    super().write_scalars(step, scalars)
    if time.monotonic() - self._copied > COPY_EVERY_S:
      self.flush()

  def flush(self):
    super().flush()
    self._copy()

  def close(self):
    super().close()
    self._copy()
    shutil.rmtree(self._local, ignore_errors=True)


def create_writer(workdir: str, *, log_metrics: bool) -> metric_writers.MetricWriter:
  """TensorBoard files in `workdir` (process 0 only), and every metric as a log line too
  where `log_metrics` (the console shows progress and eval lines of its own)."""
  writers = []
  if jax.process_index() == 0:
    writers.append(
      (CopiedSummaryWriter if storage.is_url(workdir) else ScalarSummaryWriter)(workdir)
    )
  if log_metrics:
    writers.append(metric_writers.LoggingWriter())
  return metric_writers.AsyncMultiWriter(writers)


PARAMETERS_FILE = 'parameters.txt'


def write_parameter_overview(writer, workdir: str, name: str, params, *, log_table: bool) -> None:
  """The parameter table (name, shape, dtype, size, mean, std) to WORKDIR/parameters.txt
  and TensorBoard's text tab; the log gets the count, or the whole table if `log_table`."""
  table = parameter_overview.get_parameter_overview(params)
  if jax.process_index() == 0:
    storage.write_atomically(storage.join(workdir, PARAMETERS_FILE), table + '\n')
  # Indented four spaces, TensorBoard's markdown shows the table as it is.
  writer.write_texts(0, {'parameters': '\n'.join('    ' + line for line in table.splitlines())})
  count = parameter_overview.count_parameters(params)
  if log_table:
    logging.info('Parameters of %s:\n%s', name, table)
  else:
    logging.info(
      '%s: %s parameters (table in %s).', name, f'{count:,}', storage.join(workdir, PARAMETERS_FILE)
    )
