"""Checkpoints with orbax: asynchronous saves, the last N kept and the best by eval accuracy.

Layout: WORKDIR/checkpoints/<step>/ holds the train state and, for steps that were
evaluated, their eval metrics (orbax writes those only when the manager has a best_fn,
which is what lets the best checkpoint survive restarts). A checkpoint that cannot be
restored is moved to WORKDIR/checkpoints_damaged/<step>, never deleted. Multi-host runs
write each checkpoint once, through orbax's own multi-process coordination. WORKDIR may be
a bucket (gs://...): orbax and tensorstore write there directly.
"""

import contextlib
import dataclasses
import logging
import sys

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from gmm_vit_jax import errors, storage
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training.run_directory import RunDirectory
from gmm_vit_jax.training.state import TrainState

BEST_METRIC = 'eval_accuracy'
CHECKPOINTS = 'checkpoints'
DAMAGED = 'checkpoints_damaged'
# Which weights restore_run can return: the TrainState field holding them.
WEIGHTS = {'raw': 'params', 'ema': 'ema'}


class _QuietOrbax(logging.Filter):
  """Drops two kinds of orbax records: the warning at every save without metrics once it
  tracks the best (here only evaluated steps have metrics, by design), and the tracebacks
  its save threads log for a full disk or a read-only path, which Checkpointer raises as
  one StorageError line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if 'did not provide metrics' in record.getMessage():
      return False
    exc = record.exc_info[1] if record.exc_info else None
    return exc is None or errors.describe_storage_error(exc) is None


_QUIET_ORBAX = _QuietOrbax()


def _closed_loop(value: BaseException | None) -> bool:
  """Whether `value` is the 'Event loop is closed' error of a callback that orbax's array
  writes schedule after a failed save has closed their event loop: noise behind the one
  error the save raises."""
  return isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'


def _quiet_closed_loop_callbacks(excepthook, unraisablehook):
  """sys.excepthook and sys.unraisablehook that drop those errors (Python reports them
  through either, depending on the thread that runs the callback)."""

  def quiet_excepthook(kind, value, traceback):
    if not _closed_loop(value):
      excepthook(kind, value, traceback)

  def quiet_unraisablehook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      unraisablehook(unraisable)

  quiet_excepthook.quiet_closed_loops = quiet_unraisablehook.quiet_closed_loops = True
  return quiet_excepthook, quiet_unraisablehook


@contextlib.contextmanager
def _storage_errors(where: str):
  """Turns a storage failure of orbax's (whose OSError often names no file) into a
  StorageError naming `where`."""
  try:
    yield
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    described = errors.describe_storage_error(e, where=where)
    if described is None:
      raise
    raise errors.StorageError(described) from e


def selection_metric(config: ml_collections.ConfigDict) -> str:
  """The metric the best checkpoint of a run with `config` is chosen on: the validation
  split's accuracy when dataset.validation holds one out or the data has one
  (dataset.validation_split), else the test split's."""
  validates = config.dataset.get('validation') or config.dataset.get('validation_split')
  return 'val_accuracy' if validates else BEST_METRIC


def _value_of(metric: str):
  """best_fn for orbax: a checkpoint's saved metrics -> the value ranking it."""
  return lambda metrics: metrics[metric]


def _manager(workdir: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    storage.join(storage.absolute(workdir), CHECKPOINTS), options=options
  )


def _policy(config: ml_collections.ConfigDict, best_metric: str) -> policies.PreservationPolicy:
  latest = policies.LatestN(n=config.keep_last)
  if not config.keep_best:
    return latest
  best = policies.BestN(
    get_metric_fn=_value_of(best_metric), n=1, keep_checkpoints_without_metrics=False
  )
  return policies.AnyPreservationPolicy([latest, best])


@jax.jit
def nonfinite_count(tree) -> jax.Array:
  """() int32: how many NaN or infinite values the floating-point leaves of `tree` hold."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return sum((jnp.sum(~jnp.isfinite(x)) for x in leaves), jnp.int32(0))


class Checkpointer:
  """Saves and restores TrainState under WORKDIR/checkpoints."""

  def __init__(
    self, workdir: str, config: ml_collections.ConfigDict, best_metric: str = BEST_METRIC
  ):
    """best_metric: the saved metric whose highest value marks the best checkpoint."""
    self.workdir = workdir
    self.best_metric = best_metric
    logging.getLogger('absl').addFilter(_QUIET_ORBAX)
    if not getattr(sys.unraisablehook, 'quiet_closed_loops', False):
      sys.excepthook, sys.unraisablehook = _quiet_closed_loop_callbacks(
        sys.excepthook, sys.unraisablehook
      )
    self.manager = _manager(
      workdir,
      ocp.CheckpointManagerOptions(
        preservation_policy=_policy(config, best_metric),
        best_fn=_value_of(best_metric),
        create=False,
        enable_async_checkpointing=True,
      ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best(self) -> tuple[int, dict] | None:
    """(step, eval metrics) of the best evaluated checkpoint, if any."""
    step = self.manager.best_step()
    metrics = None if step is None else self.manager.metrics(step)
    return None if metrics is None else (step, dict(metrics))

  def latest_evaluated(self) -> tuple[int, dict] | None:
    """(step, eval metrics) of the newest checkpoint that was evaluated, if any."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      metrics = self.manager.metrics(step)
      if metrics is not None:
        return step, dict(metrics)
    return None

  def restore(self, like: TrainState) -> TrainState | None:
    """The newest checkpoint that restores, with the shapes, dtypes and shardings of `like`.

    Newer ones that fail are moved to WORKDIR/checkpoints_damaged and named in the log.
    None if there is no checkpoint; a CheckpointError if none restores (then nothing moves:
    a failure of every checkpoint points at the code or config, not at the files).
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}'
        logging.warning(
          'The checkpoint at step %d cannot be restored (%s); trying an older one.', step, reason
        )
        failed.append((step, reason))
        continue
      self._set_aside([s for s, _ in failed])
      return state
    if failed:
      raise errors.CheckpointError(
        f'None of the checkpoints in {self.manager.directory} restores (steps '
        f'{", ".join(str(s) for s, _ in failed)}); the newest fails with {failed[0][1]}. '
        'If the code or config changed since they were written, go back to it, or choose a '
        'new --workdir.'
      )
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoint restored')
    if jax.process_index() == 0:
      damaged = storage.join(self.workdir, DAMAGED)
      storage.makedirs(damaged)
      for step in steps:
        destination = storage.join(damaged, str(step))
        while storage.exists(destination):
          destination += '_'
        storage.move(storage.join(str(self.manager.directory), str(step)), destination)
        logging.warning('Moved the damaged checkpoint of step %d to %s.', step, destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('damaged checkpoints moved')
    self.manager.reload()

  def save(self, state: TrainState, metrics: dict | None = None, *, force: bool = False) -> None:
    """Saves `state` (with its eval `metrics`, if evaluated) unless it is not finite.

    A NonFiniteError, and nothing written, for a state with NaN or infinite values: a
    poisoned checkpoint would make every rerun diverge again.
    """
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    bad = int(nonfinite_count((state.params, state.opt_state)))
    if bad:
      raise self.nonfinite_error(
        f'The train state holds {bad:,} NaN or infinite values at step {step}'
      )
    with _storage_errors(storage.join(str(self.manager.directory), str(step))):
      self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)

  def nonfinite_error(self, what: str) -> errors.NonFiniteError:
    """The error that stops a run gone NaN or infinite: `what` happened, nothing was saved."""
    latest = self.manager.latest_step()
    kept = (
      'no checkpoint was saved before it'
      if latest is None
      else f'the last good checkpoint (step {latest}) is intact'
    )
    return errors.NonFiniteError(
      f'{what}. The run stopped without saving, and {kept}. Lower optimizer.learning_rate '
      'or set optimizer.grad_clip_norm, then rerun to resume.'
    )

  def commit(self, step: int) -> None:
    """Blocks until every asynchronous save has landed, then makes sure the checkpoint of
    `step` is committed (finalized by orbax, found on disk); a StorageError or a
    CheckpointError if not, so that no run reports success without it."""
    where = storage.join(str(self.manager.directory), str(step))
    with _storage_errors(where):
      self.manager.wait_until_finished()
      self.manager.reload()  # What is on disk, not what the manager remembers saving.
      if step in self.manager.all_steps():
        return
    raise errors.CheckpointError(
      f'The checkpoint of step {step} was not committed to {where}; the run is not saved '
      'there. Check that the workdir is writable and has room, then rerun the same command.'
    )

  def close(self) -> None:
    """Blocks until every asynchronous save has landed on disk."""
    with _storage_errors(str(self.manager.directory)):
      self.manager.wait_until_finished()
    self.manager.close()


@dataclasses.dataclass
class RestoredRun:
  """The weights of one checkpoint of a run, with what is known about them."""

  model: nnx.Module
  config: ml_collections.ConfigDict
  step: int
  metrics: dict | None  # Eval metrics saved with the checkpoint; None if not evaluated.


def step_flag(flag: str) -> str | int:
  """A --step flag's text as restore_run's `which`: 'best', 'latest' or a step number."""
  if flag in ('best', 'latest'):
    return flag
  try:
    return int(flag)
  except ValueError:
    raise errors.UserError(f"--step={flag!r}: use 'best', 'latest' or a step number.") from None


def restore_run(workdir: str, which: str | int = 'best', weights: str = 'raw') -> RestoredRun:
  """The model of a run at `which`: 'best' (by the run's selection metric; the latest if
  none was evaluated), 'latest', or a step number.

  weights: 'raw', the trained params, or 'ema', their moving average (runs with ema_decay).
  """
  if which not in ('best', 'latest') and not isinstance(which, int):
    raise errors.UserError(f"the step {which!r} is not one of 'best', 'latest' or a number.")
  if weights not in WEIGHTS:
    raise errors.UserError(f'weights={weights!r} is not supported; choose one of {tuple(WEIGHTS)}.')
  storage.check_reachable(workdir)
  stored = RunDirectory(workdir).stored_config()
  if stored is None:
    raise errors.UserError(f'{workdir} holds no config.json: it is not a training run directory.')
  config = ml_collections.ConfigDict(stored)
  if weights == 'ema' and not config.get('ema_decay'):
    raise errors.UserError(
      f'weights=ema: the run in {workdir} kept no moving average (its ema_decay is off).'
    )
  model = nnx.eval_shape(lambda: build_from_config(config))
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  manager = _manager(
    workdir, ocp.CheckpointManagerOptions(best_fn=_value_of(selection_metric(config)), create=False)
  )
  steps = manager.all_steps()
  if not steps:
    raise errors.CheckpointError(f'{workdir}/{CHECKPOINTS} holds no checkpoint yet.')
  if which == 'best':
    step = manager.best_step() if any(manager.metrics(s) for s in steps) else None
    step = manager.latest_step() if step is None else step
  elif which == 'latest':
    step = manager.latest_step()
  elif which in steps:
    step = which
  else:
    raise errors.CheckpointError(
      f'{workdir} has no checkpoint of step {which}; it has {", ".join(map(str, steps))}.'
    )
  # Onto this process's first device, whatever devices and processes wrote the checkpoint.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
    {WEIGHTS[weights]: nnx.to_pure_dict(params), 'buffers': nnx.to_pure_dict(buffers)},
  )
  restored = manager.restore(
    step,
    args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True,
    ),
  )
  metrics = manager.metrics(step)
  manager.close()
  logging.info('Restored the step %d %s weights from %s.', step, weights, workdir)
  return RestoredRun(
    model=nnx.merge(graphdef, restored[WEIGHTS[weights]], restored['buffers']),
    config=config,
    step=step,
    metrics=None if metrics is None else dict(metrics),
  )


def restore_model(
  workdir: str, which: str | int = 'best', weights: str = 'raw'
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The trained model of a run and its resolved config (see restore_run)."""
  run = restore_run(workdir, which, weights)
  return run.model, run.config
