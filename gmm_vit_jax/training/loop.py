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
from gmm_vit_jax.training.pictures import (augmentation_picture, gmm_masks_picture,
                                           kept_patches_picture, write_picture)
from gmm_vit_jax.training.progress import Progress, closing_line
from gmm_vit_jax.training.run_directory import RunDirectory
from gmm_vit_jax.training.state import Metrics, TrainState, create_train_state, state_layout
from gmm_vit_jax.training.step import make_eval_step, make_train_step
from gmm_vit_jax.training.throughput import Throughput
from gmm_vit_jax.training.writers import create_writer, write_parameter_overview

PICTURE_EXAMPLES = 8
EVAL_PREFIXES = {'test': 'eval', 'validation': 'val'}  # Of the metrics of each split.


class _StopRequest:
  """Turns SIGTERM into a stop between steps, where the loop saves a checkpoint and returns.

  With several processes, JAX's preemption service (started by jax.distributed.initialize)
  catches SIGTERM on any of them and all agree on the step to stop at, so every process
  takes part in the same last save.
  """

  def __init__(self):
    self.requested = False
    self._multiprocess = jax.process_count() > 1
    if not self._multiprocess:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def check(self, step: int) -> bool:
    """Whether to stop before training step `step`; called once per step."""
    if self._multiprocess and multihost_utils.reached_preemption_sync_point(step):
      logging.warning('SIGTERM received by a process: all stop at step %d to save.', step)
      self.requested = True
    return self.requested

  def restore(self):
    if not self._multiprocess:
      signal.signal(signal.SIGTERM, self._previous)


def _selects_patches(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> bool:
  """Whether training step `step` filters its batch: a draw from (seed, step), so a resumed
  run makes the same choices."""
  if config.patch_selection.kind == 'none':
    return False
  p = patches.application_probability(config.patch_selection, step // steps_per_epoch)
  return np.random.default_rng([config.seed, step]).random() < p


def _check_finite(metrics: Metrics, step: int, checkpointer: Checkpointer) -> None:
  if float(metrics.nonfinite):
    raise checkpointer.nonfinite_error(f'The training loss became NaN or infinite before step '
                                       f'{step}')


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: tuple[str, ...] = ()) -> dict:
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
    checkpointer = Checkpointer(workdir, config.checkpoint,
                                best_metric=selection_metric(config))
    try:
      changes = run.check_config(config, has_checkpoint=checkpointer.latest_step() is not None,
                                 allowed=tuple(allow_config_change),
                                 changes_structure=_changes_structure(config))
      finished = run.finished_summary(config, checkpointer.latest_step())
      if finished:
        logging.info('Already complete, nothing to train. %s', closing_line(
            finished, run.path('summary.json'), checkpointer.best_metric))
        return finished
      return _train(config, run, checkpointer, changes, mesh, info, started)
    finally:
      checkpointer.close()


def _train(config, run: RunDirectory, checkpointer: Checkpointer, changes: dict, mesh, info: dict,
           started: float) -> dict:
  workdir = run.workdir
  replicated = sharding.replicated(mesh)
  logging.info('Mesh: %s over %d devices (%s), %d process(es).', dict(mesh.shape),
               jax.device_count(), jax.devices()[0].platform, jax.process_count())

  if config.init_from and checkpointer.latest_step() is None:
    init_from.check(config)  # Before the data loads; a resumed run restores its own weights.
  pipeline = make_pipeline(config, mesh)
  selection = checkpointer.best_metric
  logging.debug('The best checkpoint is chosen on %s.', selection)
  steps_per_epoch = pipeline.steps_per_epoch
  total_steps = config.epochs * steps_per_epoch

  tx = make_optimizer(config, steps_per_epoch)
  graphdef, state = create_train_state(config, tx, replicated)
  restored = checkpointer.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resumed from the checkpoint at step %d of %d.', int(state.step), total_steps)
  elif config.init_from:
    state = init_from.initialise(state, config, mesh, workdir)
  start_step = int(state.step)
  for field, (old, new) in changes.items():
    logging.warning('Config change accepted: %s %r -> %r.', field, old, new)
  run.write_config(config, changes, start_step)

  train_step = make_train_step(graphdef, tx, config, info, out_sharding=replicated)
  eval_step = make_eval_step(graphdef, info, out_sharding=replicated)
  learning_rate = learning_rate_schedule(config, steps_per_epoch)
  writer = create_writer(workdir, log_metrics=console.verbose())
  write_parameter_overview(writer, workdir, config.model.name, state.params,
                           log_table=console.verbose())
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    examples = pipeline.examples('train', PICTURE_EXAMPLES)
    write_picture(writer, workdir, 'augmentation', augmentation_picture(
        examples, jax.random.key(config.seed), config, info), step=0)
    if config.patch_selection.kind != 'none':
      write_picture(writer, workdir, 'kept_patches', kept_patches_picture(config, examples),
                    step=0)
  progress = Progress(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                      batch_size=config.batch_size, every_s=config.progress_every_s,
                      max_lines=config.progress_max_lines)
  throughput = Throughput(config.batch_size)
  stop = _StopRequest()
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  best = checkpointer.best()  # (step, eval metrics), kept with the checkpoints.
  last_eval = checkpointer.latest_evaluated()
  last_train = {}
  eval_time = 0.0
  timed_from = None  # (time, step) once the first step has compiled and run.
  step = start_step
  train_batches = pipeline.train_batches(start_step, total_steps)
  try:
    with metric_writers.ensure_flushes(writer), progress.attached():
      while step < total_steps and not stop.check(step):
        if config.profile_steps and step == config.profile_start_step:
          jax.profiler.start_trace(os.path.join(workdir, 'profile'))
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = train_step(state, metrics, *next(train_batches),
                                      _selects_patches(config, step, steps_per_epoch))
        step += 1
        if config.profile_steps and step == config.profile_start_step + config.profile_steps:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          logging.info('Wrote a profile of steps %d-%d to %s/profile.', config.profile_start_step,
                       step - 1, workdir)
        if timed_from is None:
          jax.block_until_ready(state)
          timed_from = (time.perf_counter(), step)
          throughput.start(step)
        progress(step, lambda: metrics.summary('train'))
        epoch_end = step % steps_per_epoch == 0
        if step % config.log_every_steps == 0 or epoch_end or step == total_steps:
          _check_finite(metrics, step, checkpointer)
          scalars = metrics.summary('train')
          scalars['learning_rate'] = float(learning_rate(step - 1))
          writer.write_scalars(step, {**scalars, **throughput.rates(step)})
          last_train = scalars
          metrics = sharding.put_replicated(Metrics.zeros(), mesh)
        epoch = step // steps_per_epoch
        if (epoch_end and epoch % config.eval_every_epochs == 0) or step == total_steps:
          eval_started = time.perf_counter()
          results = {}
          for split in pipeline.eval_splits:
            results.update(evaluate(eval_step, state, lambda: pipeline.eval_batches(split),
                                    mesh, prefix=EVAL_PREFIXES[split]))
          writer.write_scalars(step, {**results, 'epoch': epoch})
          if config.model.mask.kind == 'gmm':
            write_picture(writer, workdir, 'gmm_masks', gmm_masks_picture(
                graphdef, state.params, state.buffers, step=step, mode=config.model.mask.mode),
                step=step)
          eval_seconds = time.perf_counter() - eval_started
          eval_time += eval_seconds
          progress.eval_done(step, results, eval_seconds)
          throughput.pause(eval_seconds)
          last_eval = (step, results)
          if best is None or results[selection] >= best[1][selection]:
            best = last_eval
          checkpointer.save(state, metrics=results)
        elif step % config.checkpoint.every_steps == 0:
          checkpointer.save(state)
      if stop.requested:
        checkpointer.save(state, force=True)
        logging.warning('Stopped at step %d of %d; rerun the same command to resume.', step,
                        total_steps)
    jax.block_until_ready(state)
  finally:
    stop.restore()
  timed_steps = step - timed_from[1] if timed_from else 0
  train_time = time.perf_counter() - timed_from[0] - eval_time if timed_steps else 0.0

  summary = dict(
      step=step, total_steps=total_steps, completed=step == total_steps,
      **(last_eval[1] if last_eval else {}), eval_step=last_eval and last_eval[0],
      best_eval_accuracy=best and best[1]['eval_accuracy'], best_step=best and best[0],
      **({'best_val_accuracy': best and best[1]['val_accuracy']}
         if 'validation' in pipeline.eval_splits else {}),
      **last_train,
      train_wall_time_s=time.time() - started,
      train_steps_per_s=timed_steps / train_time if train_time else None,
      train_images_per_s=timed_steps * config.batch_size / train_time if train_time else None,
      devices=jax.device_count(), platform=jax.devices()[0].platform)
  run.write_summary(summary)
  if console.verbose():
    logging.info('Summary: %s', json.dumps(summary))
  if summary['completed']:
    logging.info('%s', closing_line(summary, run.path('summary.json'), selection))
  return summary
