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

from gmm_vit_jax import console, patches
from gmm_vit_jax.data import sources
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.data.sampling import EpochSampler, eval_batches
from gmm_vit_jax.training import sharding
from gmm_vit_jax.training.checkpoint import Checkpointer, write_config
from gmm_vit_jax.training.optimizer import learning_rate_schedule, make_optimizer
from gmm_vit_jax.training.pictures import (augmentation_picture, gmm_masks_picture,
                                           kept_patches_picture, write_picture)
from gmm_vit_jax.training.progress import Progress
from gmm_vit_jax.training.state import Metrics, TrainState, create_train_state
from gmm_vit_jax.training.step import make_eval_step, make_train_step
from gmm_vit_jax.training.writers import create_writer, write_parameter_overview

SUMMARY_FILE = 'summary.json'
PICTURE_EXAMPLES = 8


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the run stopped without saving."""


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
    raise NonFiniteLossError(
        f'The training loss became NaN or infinite before step {step}. The run stopped without '
        f'saving, so the last good checkpoint (step {checkpointer.latest_step()}) is intact. '
        f'Lower optimizer.learning_rate or set optimizer.grad_clip_norm, then rerun to resume.')


def evaluate(eval_step, state: TrainState, images, labels, batch_size: int, mesh) -> dict:
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  for index, weight in eval_batches(labels.shape[0], batch_size):
    metrics = eval_step(state.params, state.buffers, metrics, images, labels,
                        sharding.global_batch(index, mesh), sharding.global_batch(weight, mesh))
  return metrics.summary('eval')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the summary."""
  started = time.time()
  os.makedirs(workdir, exist_ok=True)
  write_config(workdir, config)
  mesh = sharding.make_mesh()
  sharding.check_batch_size('batch_size', config.batch_size, mesh)
  sharding.check_batch_size('eval_batch_size', config.eval_batch_size, mesh)
  info = dataset_info(config.dataset.name)
  replicated = sharding.replicated(mesh)
  logging.info('Mesh: %s over %d devices (%s), %d process(es).', dict(mesh.shape),
               jax.device_count(), jax.devices()[0].platform, jax.process_count())

  splits, host_images = {}, {}
  for split in ('train', 'test'):
    images, labels = sources.load_split(config.dataset.name, split,
                                        data_dir=config.dataset.data_dir,
                                        download=config.dataset.download)
    host_images[split] = images[:PICTURE_EXAMPLES]
    splits[split] = sharding.put_replicated((images, labels), mesh)
    logging.info('%s split: %d images of %s, resident on the devices.', split, len(labels),
                 images.shape[1:])
  train_images, train_labels = splits['train']
  sampler = EpochSampler(train_labels.shape[0], config.batch_size, config.passes_per_epoch,
                         config.seed)
  total_steps = config.epochs * sampler.steps_per_epoch

  tx = make_optimizer(config, sampler.steps_per_epoch)
  graphdef, state = create_train_state(config, tx, replicated)

  checkpointer = Checkpointer(workdir, config.checkpoint)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info('Resumed from the checkpoint at step %d of %d.', int(state.step), total_steps)
  start_step = int(state.step)

  train_step = make_train_step(graphdef, tx, config, info, out_sharding=replicated)
  eval_step = make_eval_step(graphdef, info, out_sharding=replicated)
  learning_rate = learning_rate_schedule(config, sampler.steps_per_epoch)
  writer = create_writer(workdir, log_metrics=console.verbose())
  write_parameter_overview(writer, workdir, config.model.name, state.params,
                           log_table=console.verbose())
  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config.to_dict().items()})
    write_picture(writer, workdir, 'augmentation', augmentation_picture(
        host_images['train'], jax.random.key(config.seed), config, info), step=0)
    if config.patch_selection.kind != 'none':
      write_picture(writer, workdir, 'kept_patches',
                    kept_patches_picture(config, host_images['train']), step=0)
  progress = Progress(total_steps=total_steps, steps_per_epoch=sampler.steps_per_epoch,
                      batch_size=config.batch_size, every_s=config.progress_every_s)
  stop = _StopRequest()
  metrics = sharding.put_replicated(Metrics.zeros(), mesh)
  best = checkpointer.best_metrics() or {}
  eval_results, last_train = {}, {}
  eval_time = 0.0
  timed_from = None  # (time, step) once the first step has compiled and run.
  step = start_step
  try:
    with metric_writers.ensure_flushes(writer), progress.attached():
      while step < total_steps and not stop.check(step):
        if config.profile_steps and step == config.profile_start_step:
          jax.profiler.start_trace(os.path.join(workdir, 'profile'))
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = train_step(
              state, metrics, train_images, train_labels,
              sharding.global_batch(sampler.batch(step), mesh),
              _selects_patches(config, step, sampler.steps_per_epoch))
        step += 1
        if config.profile_steps and step == config.profile_start_step + config.profile_steps:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          logging.info('Wrote a profile of steps %d-%d to %s/profile.', config.profile_start_step,
                       step - 1, workdir)
        if timed_from is None:
          jax.block_until_ready(state)
          timed_from = (time.perf_counter(), step)
        progress(step, lambda: metrics.summary('train'))
        epoch_end = step % sampler.steps_per_epoch == 0
        if step % config.log_every_steps == 0 or epoch_end or step == total_steps:
          _check_finite(metrics, step, checkpointer)
          scalars = metrics.summary('train')
          scalars['learning_rate'] = float(learning_rate(step - 1))
          writer.write_scalars(step, scalars)
          last_train = scalars
          metrics = sharding.put_replicated(Metrics.zeros(), mesh)
        epoch = step // sampler.steps_per_epoch
        if (epoch_end and epoch % config.eval_every_epochs == 0) or step == total_steps:
          eval_started = time.perf_counter()
          eval_results = evaluate(eval_step, state, *splits['test'], config.eval_batch_size, mesh)
          writer.write_scalars(step, {**eval_results, 'epoch': epoch})
          if config.model.mask.kind == 'gmm':
            write_picture(writer, workdir, 'gmm_masks', gmm_masks_picture(
                graphdef, state.params, state.buffers, step=step, mode=config.model.mask.mode),
                step=step)
          eval_seconds = time.perf_counter() - eval_started
          eval_time += eval_seconds
          progress.eval_done(step, eval_results, eval_seconds)
          if eval_results['eval_accuracy'] >= best.get('eval_accuracy', -1.0):
            best = dict(eval_results, step=step)
          checkpointer.save(state, metrics=eval_results)
        elif step % config.checkpoint.every_steps == 0:
          _check_finite(metrics, step, checkpointer)
          checkpointer.save(state)
      if stop.requested:
        _check_finite(metrics, step, checkpointer)
        checkpointer.save(state, force=True)
        logging.warning('Stopped at step %d of %d; rerun the same command to resume.', step,
                        total_steps)
    jax.block_until_ready(state)
  finally:
    stop.restore()
    checkpointer.close()
  timed_steps = step - timed_from[1] if timed_from else 0
  train_time = time.perf_counter() - timed_from[0] - eval_time if timed_steps else float('nan')

  summary = dict(eval_results, **last_train, step=step, total_steps=total_steps,
                 completed=step == total_steps,
                 best_eval_accuracy=best.get('eval_accuracy'),
                 best_step=best.get('step'),
                 train_wall_time_s=time.time() - started,
                 train_steps_per_s=timed_steps / train_time,
                 train_images_per_s=timed_steps * config.batch_size / train_time,
                 devices=jax.device_count(), platform=jax.devices()[0].platform)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
      json.dump(summary, f, indent=2)
  if console.verbose():
    logging.info('Summary: %s', json.dumps(summary))
  logging.info('Done at step %d/%d: eval accuracy %.4g (best %.4g at step %s), %.0f s in all, '
               '%.0f img/s of training; summary in %s.', step, total_steps,
               eval_results.get('eval_accuracy', np.nan), best.get('eval_accuracy', np.nan),
               best.get('step'), summary['train_wall_time_s'], summary['train_images_per_s'],
               os.path.join(workdir, SUMMARY_FILE))
  return summary
