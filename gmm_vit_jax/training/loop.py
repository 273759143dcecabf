"""train_and_evaluate: the one training loop every config runs through."""

import json
import logging
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from jax.experimental import multihost_utils

from gmm_vit_jax import console, patches, sharding
from gmm_vit_jax.data.info import dataset_info, resolve
from gmm_vit_jax.data.pipeline import make_pipeline
from gmm_vit_jax.training import config_checks, init_from
from gmm_vit_jax.training.checkpoint import Checkpointer, selection_metric
from gmm_vit_jax.training.optimizer import learning_rate_schedule, make_optimizer
from gmm_vit_jax.training.pictures import (
  augmentation_picture,
  gmm_masks_picture,
  kept_patches_picture,
  write_picture,
)
from gmm_vit_jax.training.progress import Progress, closing_line
from gmm_vit_jax.training.run_directory import RunDirectory
from gmm_vit_jax.training.state import Metrics, TrainState, create_train_state, state_layout
from gmm_vit_jax.training.step import make_eval_step, make_train_step
from gmm_vit_jax.training.throughput import Throughput
from gmm_vit_jax.training.writers import create_writer, write_parameter_overview

PICTURE_EXAMPLES = 8
EVAL_PREFIXES = {'test': 'eval', 'validation': 'val'}  # Of the metrics of each split.


class _StopRequest:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a stop between steps, where the loop saves a
  checkpoint, waits for it to be committed and returns.

  A signal that comes while stopping only says so: the save in flight is never cut short.
  With several processes, JAX's preemption service (started by jax.distributed.initialize)
  catches SIGTERM on any of them and all agree on the step to stop at, so every process
  takes part in the same last save; SIGINT is passed on to it as a SIGTERM.
  """

  SIGNALS = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C (SIGINT)'}

  def __init__(self):
    self.requested = False
    self._multiprocess = jax.process_count() > 1
    handled = (signal.SIGINT,) if self._multiprocess else tuple(self.SIGNALS)
    # A signal ignored from the start (nohup, a background job) stays ignored.
    self._previous = {
      signum: signal.signal(signum, self._handle)
      for signum in handled
      if signal.getsignal(signum) is not signal.SIG_IGN
    }

  def _handle(self, signum, frame):
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)
    elif self.requested:
      logging.warning(
        '%s received again: still saving the checkpoint; the run stops once it is committed.',
        self.SIGNALS[signum],
      )
    else:
      logging.warning('%s received: saving a checkpoint and stopping.', self.SIGNALS[signum])
      self.requested = True

  def check(self, step: int) -> bool:
    """Whether to stop before training step `step`; called once per step."""
    if self._multiprocess and multihost_utils.reached_preemption_sync_point(step):
      logging.warning('SIGTERM received by a process: all stop at step %d to save.', step)
      self.requested = True
    return self.requested

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _selects_patches(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> bool:
  """Whether training step `step` filters its batch: a draw from (seed, step), so a resumed
  run makes the same choices."""
  if config.patch_selection.kind == 'none':
    return False
  p = patches.application_probability(config.patch_selection, step // steps_per_epoch)
  return np.random.default_rng([config.seed, step]).random() < p


def _check_finite(metrics: Metrics, step: int, checkpointer: Checkpointer) -> None:
  if float(metrics.nonfinite):
    raise checkpointer.nonfinite_error(
      f'The training loss became NaN or infinite before step {step}'
    )


def evaluate(eval_step, state: TrainState, batches, mesh, prefix: str = 'eval') -> dict:
  """<prefix>_loss and <prefix>_accuracy of the raw weights, and <prefix>_ema_* of their
  moving average when the state keeps one; batches() yields the eval step's data arguments
  (gmm_vit_jax/data/pipeline.py)."""
  weights = {prefix: state.params}
  if state.ema is not None:
    weights[f'{prefix}_ema'] = state.ema
  results = {}
  for name, params in weights.items():
    metrics = sharding.put_replicated(Metrics.zeros(), mesh)
    for batch in batches():
      metrics = eval_step(params, state.buffers, metrics, *batch)
    results.update(metrics.summary(name))
  return results


def _changes_structure(config: ml_collections.ConfigDict):
  """changes_structure(old config) for RunDirectory.check_config; it traces the two train
  states only when asked, which is only when a resumed run's config changed."""
  layout = lambda c: state_layout(c, make_optimizer(c, steps_per_epoch=1))

  def changes_structure(old: ml_collections.ConfigDict) -> bool:
    try:
      old_layout = layout(old)
    except (ValueError, TypeError, KeyError, AttributeError):  # Not even buildable any more.
      return True
    return old_layout != layout(config)

  return changes_structure


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: tuple[str, ...] = ()
) -> dict:
  """Trains `config` in `workdir`, resuming from its newest good checkpoint; returns the summary.

  allow_config_change: fields whose change against the workdir's stored config the user
  accepts (those that leave the train state's shapes alone).
  """
  started = time.time()
  config_checks.check(config)
  # Facts read from the data (an image folder's classes) go into the stored config.
  config = resolve(config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size('batch_size', config.batch_size, mesh)
  sharding.check_batch_size('eval_batch_size', config.eval_batch_size, mesh)
  info = dataset_info(config.dataset)
  run = RunDirectory(workdir)
  with run.locked():
    checkpointer = Checkpointer(workdir, config.checkpoint, best_metric=selection_metric(config))
    try:
      changes = run.check_config(
        config,
        has_checkpoint=checkpointer.latest_step() is not None,
        allowed=tuple(allow_config_change),
        changes_structure=_changes_structure(config),
      )
      finished = run.finished_summary(config, checkpointer.latest_step())
      if finished:
        logging.info(
          'Already complete, nothing to train. %s',
          closing_line(finished, run.path('summary.json'), checkpointer.best_metric),
        )
        return finished
      return _train(config, run, checkpointer, changes, mesh, info, started)
    finally:
      checkpointer.close()


class _Training:
  """One run past its checks, in named steps: set_up (data, state, steps, writers),
  step_loop (training, with log_train and evaluate_and_save at their steps), summary."""

  def __init__(
    self, config, run: RunDirectory, checkpointer: Checkpointer, mesh, info: dict, started: float
  ):
    self.config, self.run, self.checkpointer = config, run, checkpointer
    self.mesh, self.info, self.started = mesh, info, started
    self.selection = checkpointer.best_metric

  def set_up(self, changes: dict) -> None:
    """The pipeline, the train state (restored, initialised from init_from, or new), the
    jitted steps, the writers and, for a new run, its first pictures."""
    config, run, checkpointer, mesh = self.config, self.run, self.checkpointer, self.mesh
    replicated = sharding.replicated(mesh)
    logging.info(
      'Mesh: %s over %d devices (%s), %d process(es).',
      dict(mesh.shape),
      jax.device_count(),
      jax.devices()[0].platform,
      jax.process_count(),
    )
    if config.init_from and checkpointer.latest_step() is None:
      init_from.check(config)  # Before the data loads; a resumed run restores its own weights.
    self.pipeline = make_pipeline(config, mesh)
    logging.debug('The best checkpoint is chosen on %s.', self.selection)
    self.steps_per_epoch = self.pipeline.steps_per_epoch
    self.total_steps = config.epochs * self.steps_per_epoch

    tx = make_optimizer(config, self.steps_per_epoch)
    self.graphdef, state = create_train_state(config, tx, replicated)
    restored = checkpointer.restore(state)
    if restored is not None:
      state = restored
      logging.info(
        'Resumed from the checkpoint at step %d of %d.', int(state.step), self.total_steps
      )
    elif config.init_from:
      state = init_from.initialise(state, config, mesh, run.workdir)
    self.state, self.start_step = state, int(state.step)
    for field, (old, new) in changes.items():
      logging.warning('Config change accepted: %s %r -> %r.', field, old, new)
    run.write_config(config, changes, self.start_step)

    self.train_step = make_train_step(self.graphdef, tx, config, self.info, out_sharding=replicated)
    self.eval_step = make_eval_step(
      self.graphdef, self.info, out_sharding=replicated, model_dtype=config.model.dtype
    )
    self.learning_rate = learning_rate_schedule(config, self.steps_per_epoch)
    self.writer = create_writer(run.workdir, log_metrics=console.verbose())
    write_parameter_overview(
      self.writer, run.workdir, config.model.name, state.params, log_table=console.verbose()
    )
    if self.start_step == 0:
      self._first_pictures()
    self.progress = Progress(
      total_steps=self.total_steps,
      steps_per_epoch=self.steps_per_epoch,
      batch_size=config.batch_size,
      every_s=config.progress_every_s,
      max_lines=config.progress_max_lines,
    )
    self.throughput = Throughput(config.batch_size)
    self.metrics = sharding.put_replicated(Metrics.zeros(), mesh)
    self.best = checkpointer.best()  # (step, eval metrics), kept with the checkpoints.
    self.last_eval = checkpointer.latest_evaluated()
    self.last_train = {}
    self.eval_time = 0.0
    self.timed_from = None  # (time, step) once the first step has compiled and run.

  def _first_pictures(self) -> None:
    config, workdir = self.config, self.run.workdir
    self.writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    examples = self.pipeline.examples('train', PICTURE_EXAMPLES)
    write_picture(
      self.writer,
      workdir,
      'augmentation',
      augmentation_picture(examples, jax.random.key(config.seed), config, self.info),
      step=0,
    )
    if config.patch_selection.kind != 'none':
      write_picture(
        self.writer, workdir, 'kept_patches', kept_patches_picture(config, examples), step=0
      )

  def step_loop(self) -> int:
    """Trains from start_step until the last step or a stop request; returns the step
    reached, whose checkpoint is committed on disk when this returns."""
    config, stop = self.config, _StopRequest()
    step = self.start_step
    train_batches = self.pipeline.train_batches(self.start_step, self.total_steps)
    try:
      with metric_writers.ensure_flushes(self.writer), self.progress.attached():
        while step < self.total_steps and not stop.check(step):
          self._profile(step, starting=True)
          with jax.profiler.StepTraceAnnotation('train', step_num=step):
            self.state, self.metrics = self.train_step(
              self.state,
              self.metrics,
              *next(train_batches),
              _selects_patches(config, step, self.steps_per_epoch),
            )
          step += 1
          self._profile(step, starting=False)
          if self.timed_from is None:
            jax.block_until_ready(self.state)
            self.timed_from = (time.perf_counter(), step)
            self.throughput.start(step)
          self.progress(step, lambda: self.metrics.summary('train'))
          epoch_end = step % self.steps_per_epoch == 0
          if step % config.log_every_steps == 0 or epoch_end or step == self.total_steps:
            self.log_train(step)
          epoch = step // self.steps_per_epoch
          if (epoch_end and epoch % config.eval_every_epochs == 0) or step == self.total_steps:
            self.evaluate_and_save(step, epoch)
          elif step % config.checkpoint.every_steps == 0:
            self.checkpointer.save(self.state)
        if step < self.total_steps:  # Stopped early: the state of `step` is saved.
          self.checkpointer.save(self.state, force=True)
      jax.block_until_ready(self.state)
      # Nothing says done or stopped before the checkpoint of `step` is committed on disk.
      self.checkpointer.commit(step)
      if step < self.total_steps:
        logging.warning(
          'Stopped at step %d of %d; rerun the same command to resume.', step, self.total_steps
        )
    finally:
      stop.restore()
    return step

  def _profile(self, step: int, *, starting: bool) -> None:
    """Starts a jax.profiler trace before step profile_start_step, and stops it after
    profile_steps steps."""
    config = self.config
    if not config.profile_steps:
      return
    if starting and step == config.profile_start_step:
      jax.profiler.start_trace(os.path.join(self.run.workdir, 'profile'))
    elif not starting and step == config.profile_start_step + config.profile_steps:
      jax.block_until_ready(self.state)
      jax.profiler.stop_trace()
      logging.info(
        'Wrote a profile of steps %d-%d to %s/profile.',
        config.profile_start_step,
        step - 1,
        self.run.workdir,
      )

  def log_train(self, step: int) -> None:
    """The training metrics since the last log to TensorBoard, after the NaN check."""
    _check_finite(self.metrics, step, self.checkpointer)
    scalars = self.metrics.summary('train')
    scalars['learning_rate'] = float(self.learning_rate(step - 1))
    self.writer.write_scalars(step, {**scalars, **self.throughput.rates(step)})
    self.last_train = scalars
    self.metrics = sharding.put_replicated(Metrics.zeros(), self.mesh)

  def evaluate_and_save(self, step: int, epoch: int) -> None:
    """Every eval split, their line and scalars, the masks picture, and a checkpoint that
    carries the results (the best one is chosen among these)."""
    config, state = self.config, self.state
    started = time.perf_counter()
    results = {}
    for split in self.pipeline.eval_splits:
      results.update(
        evaluate(
          self.eval_step,
          state,
          lambda split=split: self.pipeline.eval_batches(split),
          self.mesh,
          prefix=EVAL_PREFIXES[split],
        )
      )
    self.writer.write_scalars(step, {**results, 'epoch': epoch})
    if config.model.mask.kind == 'gmm':
      write_picture(
        self.writer,
        self.run.workdir,
        'gmm_masks',
        gmm_masks_picture(
          self.graphdef, state.params, state.buffers, step=step, mode=config.model.mask.mode
        ),
        step=step,
      )
    seconds = time.perf_counter() - started
    self.eval_time += seconds
    self.progress.eval_done(step, results, seconds)
    self.throughput.pause(seconds)
    self.last_eval = (step, results)
    if self.best is None or results[self.selection] >= self.best[1][self.selection]:
      self.best = self.last_eval
    self.checkpointer.save(state, metrics=results)

  def summary(self, step: int) -> dict:
    """The run's summary, written to WORKDIR/summary.json; the closing line if complete."""
    config, best, last_eval = self.config, self.best, self.last_eval
    timed_steps = step - self.timed_from[1] if self.timed_from else 0
    train_time = time.perf_counter() - self.timed_from[0] - self.eval_time if timed_steps else 0.0
    summary = dict(
      step=step,
      total_steps=self.total_steps,
      completed=step == self.total_steps,
      **(last_eval[1] if last_eval else {}),
      eval_step=last_eval and last_eval[0],
      best_eval_accuracy=best and best[1]['eval_accuracy'],
      best_step=best and best[0],
      **(
        {'best_val_accuracy': best and best[1]['val_accuracy']}
        if 'validation' in self.pipeline.eval_splits
        else {}
      ),
      **self.last_train,
      train_wall_time_s=time.time() - self.started,
      train_steps_per_s=timed_steps / train_time if train_time else None,
      train_images_per_s=timed_steps * config.batch_size / train_time if train_time else None,
      devices=jax.device_count(),
      platform=jax.devices()[0].platform,
    )
    self.run.write_summary(summary)
    if console.verbose():
      logging.info('Summary: %s', json.dumps(summary))
    if summary['completed']:
      logging.info('%s', closing_line(summary, self.run.path('summary.json'), self.selection))
    return summary


def _train(
  config,
  run: RunDirectory,
  checkpointer: Checkpointer,
  changes: dict,
  mesh,
  info: dict,
  started: float,
) -> dict:
  training = _Training(config, run, checkpointer, mesh, info, started)
  training.set_up(changes)
  return training.summary(training.step_loop())
