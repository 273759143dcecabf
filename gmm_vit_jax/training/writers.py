"""Where a run's metrics and parameter table go: TensorBoard event files and the workdir;
the log gets them only when asked.

clu's TensorFlow writer stores scalars as TF2 tensor summaries, which TensorBoard's web
page shows but its EventAccumulator (and tools built on it: tbparse, pandas exports) files
under tensors. Here scalars are written as classic `simple_value` scalars instead.
"""

import logging
import os

import jax
import tensorflow as tf
from clu import metric_writers, parameter_overview


class ScalarSummaryWriter(metric_writers.SummaryWriter):
  """clu's SummaryWriter, with scalars written as `Summary.Value.simple_value`."""

  def write_scalars(self, step, scalars):
    summary = tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=key, simple_value=float(value))
        for key, value in scalars.items()])
    with self._summary_writer.as_default():
      tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


def create_writer(workdir: str, *, log_metrics: bool) -> metric_writers.MetricWriter:
  """TensorBoard files in `workdir` (process 0 only), and every metric as a log line too
  where `log_metrics` (the console shows progress and eval lines of its own)."""
  writers = []
  if jax.process_index() == 0:
    writers.append(ScalarSummaryWriter(workdir))
  if log_metrics:
    writers.append(metric_writers.LoggingWriter())
  return metric_writers.AsyncMultiWriter(writers)


PARAMETERS_FILE = 'parameters.txt'


def write_parameter_overview(writer, workdir: str, name: str, params, *, log_table: bool) -> None:
  """The parameter table (name, shape, dtype, size, mean, std) to WORKDIR/parameters.txt
  and TensorBoard's text tab; the log gets the count, or the whole table if `log_table`."""
  table = parameter_overview.get_parameter_overview(params)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, PARAMETERS_FILE), 'w') as f:
      f.write(table + '\n')
  # Indented four spaces, TensorBoard's markdown shows the table as it is.
  writer.write_texts(0, {'parameters': '\n'.join('    ' + line for line in table.splitlines())})
  count = parameter_overview.count_parameters(params)
  if log_table:
    logging.info('Parameters of %s:\n%s', name, table)
  else:
    logging.info('%s: %s parameters (table in %s).', name, f'{count:,}',
                 os.path.join(workdir, PARAMETERS_FILE))
