"""The console's view of a run: one progress line every few seconds, one line per eval.

On a terminal the progress line is rewritten in place (a carriage return and an
erase-to-end-of-line, as progress bars do), and any log record clears it first so the two
never share a line. Anywhere else (a log file, a pipe, a notebook cell) each update is an
ordinary log line, so a log file reads line by line.
"""

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping

CLEAR_LINE = '\r\x1b[K'


def format_duration(seconds: float) -> str:
  """Seconds as a person reads them: '42s' under a minute, '3m05s' under an hour, else
  '2h04m'; a rising count of seconds never rounds down to '0m'."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def epoch_of(step: int, steps_per_epoch: int) -> int:
  """The epoch (from 1) that training step `step` (counted from 1) belongs to."""
  return max(1, -(-step // steps_per_epoch))


# The splits an eval reports, by the prefix of their metrics (training/loop.py), as the
# console names them, in the order it shows them.
SPLIT_NAMES = {'val': 'val', 'eval': 'test'}


def eval_figures(results: Mapping[str, float]) -> str:
  """'val 97.90%  test 98.33%  ema 98.61%  loss 0.0421': the accuracy of each split the
  results hold, then that of the weights' moving average where the run keeps one (of each
  split, named, when there are two), then the test loss of the raw weights."""
  splits = [
    (name, prefix) for prefix, name in SPLIT_NAMES.items() if f'{prefix}_accuracy' in results
  ]
  figures = [f'{name} {results[f"{prefix}_accuracy"]:.2%}' for name, prefix in splits]
  averaged = [(name, prefix) for name, prefix in splits if f'{prefix}_ema_accuracy' in results]
  figures += [
    f'ema{f" {name}" if len(averaged) > 1 else ""} {results[f"{prefix}_ema_accuracy"]:.2%}'
    for name, prefix in averaged
  ]
  if 'eval_loss' in results:
    figures.append(f'loss {results["eval_loss"]:.4f}')
  return '  '.join(figures)


def metric_name(metric: str) -> str:
  """A summary metric as a person reads it: 'val_accuracy' -> 'validation accuracy'."""
  prefix, _, what = metric.partition('_')
  return f'{"validation" if prefix == "val" else SPLIT_NAMES.get(prefix, prefix)} {what}'


def closing_line(summary: Mapping, summary_path: str, selection: str) -> str:
  """The line that ends a complete run: its figures, the best checkpoint and the metric it
  was chosen on, the time and the rate, and where the summary is."""
  best_prefix = selection.rpartition('_')[0]
  best = summary.get(f'best_{selection}')
  rate = summary.get('train_images_per_s')
  return (
    f'Done at step {summary["step"]}/{summary["total_steps"]}: '
    f'{eval_figures(summary)}; best {SPLIT_NAMES.get(best_prefix, best_prefix)} '
    f'{"-" if best is None else f"{best:.2%}"} at step {summary.get("best_step")} (the '
    f'checkpoint export takes, chosen on {metric_name(selection)}); '
    f'{format_duration(summary["train_wall_time_s"])} in all'
    f'{f", {rate:,.0f} img/s of training" if rate else ""}. Summary: {summary_path}'
  )


class _ClearsLiveLine(logging.Filter):
  """Attached to the console's log handlers: erases the live progress line before a record
  is written, so the record starts at column 0; the next update redraws the line."""

  def __init__(self, progress: 'Progress'):
    super().__init__()
    self._progress = progress

  def filter(self, record):
    self._progress.clear()
    return True


class Progress:
  """Reports training progress at most every `every_s` seconds of wall time.

  Call it after every training step; it reads the clock and returns at once unless a
  line is due (so the metrics, a device-to-host copy, are fetched only for lines that
  print). With `max_lines`, lines are also at least total_steps / max_lines steps apart,
  so a slow machine does not print more of them than a fast one. Rates and the ETA leave
  out compilation (the first step it is called for starts the clock) and evaluation
  (`eval_done` moves the clock past it).
  """

  def __init__(
    self,
    *,
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
    every_s: float,
    max_lines: int = 0,
    stream=None,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    self.every_s = every_s
    self.min_steps = -(-total_steps // max_lines) if max_lines else 0
    self._stream = stream if stream is not None else sys.stderr
    self._tty = bool(getattr(self._stream, 'isatty', lambda: False)())
    self._clock = clock
    self._origin = None  # (time, step) where timing starts: after the first (compiled) step.
    self._last = None  # (time, step) of the last line.
    self._live = False  # A progress line without its newline is on the terminal.
    self.lines = 0

  @property
  def epochs(self) -> int:
    return -(-self.total_steps // self.steps_per_epoch)

  def __call__(self, step: int, metrics: Callable[[], Mapping[str, float]]) -> None:
    """`metrics()` returns {'train_loss', 'train_accuracy'} of the steps since the last
    reset; it is called only when a line prints."""
    now = self._clock()
    if self._origin is None:
      self._origin = self._last = (now, step)
      return
    if now - self._last[0] < self.every_s or step - self._last[1] < self.min_steps:
      return
    self._show(self.line(step, now, metrics()))
    self._last = (now, step)

  def line(self, step: int, now: float, metrics: Mapping[str, float]) -> str:
    window = max(now - self._last[0], 1e-9)
    images_per_s = (step - self._last[1]) * self.batch_size / window
    steps_per_s = (step - self._origin[1]) / max(now - self._origin[0], 1e-9)
    eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float('inf')
    eta_text = format_duration(eta) if eta != float('inf') else '?'
    return (
      f'epoch {epoch_of(step, self.steps_per_epoch)}/{self.epochs}  '
      f'step {step}/{self.total_steps}  {images_per_s:,.0f} img/s  '
      f'loss {metrics["train_loss"]:.4f}  accuracy {metrics["train_accuracy"]:.1%}  '
      f'ETA {eta_text}'
    )

  def eval_done(self, step: int, results: Mapping[str, float], seconds: float) -> None:
    """One line for an evaluation that took `seconds`, which the rates then leave out."""
    if self._origin is not None:
      self._origin = (self._origin[0] + seconds, self._origin[1])
      self._last = (self._last[0] + seconds, self._last[1])
    logging.info(
      'eval  epoch %d/%d  step %d/%d  %s  (%s)',
      epoch_of(step, self.steps_per_epoch),
      self.epochs,
      step,
      self.total_steps,
      eval_figures(results),
      format_duration(seconds) if seconds >= 1 else f'{seconds:.2f}s',
    )

  def _show(self, text: str) -> None:
    self.lines += 1
    if self._tty:
      self._stream.write(CLEAR_LINE + text)
      self._stream.flush()
      self._live = True
    else:
      logging.info(text)

  def clear(self) -> None:
    """Erases a live progress line (a no-op off a terminal)."""
    if self._live:
      self._stream.write(CLEAR_LINE)
      self._stream.flush()
      self._live = False

  @contextlib.contextmanager
  def attached(self):
    """While inside, log records written by the root logger's handlers clear the live
    line first; on leaving, the last progress line stays on the screen."""
    handlers = list(logging.getLogger().handlers)
    keeper = _ClearsLiveLine(self)
    for handler in handlers:
      handler.addFilter(keeper)
    try:
      yield self
    finally:
      for handler in handlers:
        handler.removeFilter(keeper)
      if self._live:
        self._stream.write('\n')
        self._stream.flush()
        self._live = False
