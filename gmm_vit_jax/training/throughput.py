"""Training throughput for TensorBoard: images/s and steps/s between two logged steps."""

import time
from collections.abc import Callable


class Throughput:
  """Rates of the training steps since the last `rates` call. Timing starts at `start`
  (after the first step has compiled) and leaves out evaluation (`pause`)."""

  def __init__(self, batch_size: int, clock: Callable[[], float] = time.perf_counter):
    self.batch_size = batch_size
    self._clock = clock
    self._mark = None  # (time, step) the next rates count from.

  def start(self, step: int) -> None:
    self._mark = (self._clock(), step)

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` of work that was not training (an evaluation) out of the rates."""
    if self._mark is not None:
      self._mark = (self._mark[0] + seconds, self._mark[1])

  def rates(self, step: int) -> dict[str, float]:
    """{'steps_per_s', 'images_per_s'} of the steps up to `step` since the last call (or
    `start`); empty before `start` or when no step ran. Call it after a host sync (the
    metrics' transfer), so the clock sees the steps done rather than dispatched."""
    if self._mark is None or step == self._mark[1]:
      return {}
    now = self._clock()
    steps, seconds = step - self._mark[1], max(now - self._mark[0], 1e-9)
    self._mark = (now, step)
    return {'steps_per_s': steps / seconds, 'images_per_s': steps * self.batch_size / seconds}
