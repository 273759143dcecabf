"""Checkpoints with orbax: asynchronous saves, the last N kept and the best by eval accuracy.

Layout: WORKDIR/config.json (the resolved config) and WORKDIR/checkpoints/<step>/ (the
train state). Multi-host runs write each checkpoint once, through orbax's own
multi-process coordination.
"""

import json
import logging
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training.state import TrainState

BEST_METRIC = 'eval_accuracy'
CONFIG_FILE = 'config.json'
# Which weights restore_model can return: the TrainState field holding them.
WEIGHTS = {'raw': 'params', 'ema': 'ema'}


def selection_metric(config: ml_collections.ConfigDict) -> str:
  """The metric the best checkpoint of a run with `config` is chosen on: the validation
  split's accuracy when dataset.validation holds one out, else the test split's."""
  return 'val_accuracy' if config.dataset.get('validation') else BEST_METRIC


def _policy(config: ml_collections.ConfigDict, best_metric: str) -> policies.PreservationPolicy:
  latest = policies.LatestN(n=config.keep_last)
  if not config.keep_best:
    return latest
  best = policies.BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                        keep_checkpoints_without_metrics=False)
  return policies.AnyPreservationPolicy([latest, best])


class Checkpointer:
  """Saves and restores TrainState under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict,
               best_metric: str = BEST_METRIC):
    """best_metric: the saved metric whose highest value marks the best checkpoint."""
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(preservation_policy=_policy(config, best_metric),
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_metrics(self) -> dict | None:
    """The metrics saved with the best checkpoint so far, if any has metrics."""
    step = self.manager.best_step()
    return None if step is None else self.manager.metrics(step)

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """Restores `step` (default: the latest) with the shapes, dtypes and shardings of `like`."""
    step = self.manager.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def save(self, state: TrainState, metrics: dict | None = None, *, force: bool = False) -> None:
    step = int(state.step)
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)

  def close(self) -> None:
    """Blocks until every asynchronous save has landed on disk."""
    self.manager.wait_until_finished()
    self.manager.close()


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_model(workdir: str, which: str = 'best',
                  weights: str = 'raw') -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The trained model of a run: its resolved config and the best (or latest) weights.

  weights: 'raw', the trained params, or 'ema', their moving average (runs with ema_decay).
  """
  if which not in ('best', 'latest'):
    raise ValueError(f"which={which!r} is not supported; choose 'best' or 'latest'.")
  if weights not in WEIGHTS:
    raise ValueError(f'weights={weights!r} is not supported; choose one of {WEIGHTS}.')
  config = read_config(workdir)
  if weights == 'ema' and not config.get('ema_decay'):
    raise ValueError(f'weights=ema: the run in {workdir} kept no moving average '
                     '(its ema_decay is off).')
  model = nnx.eval_shape(lambda: build_from_config(config))
  graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.best_step() if which == 'best' else None
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints.')
  # Onto this process's first device, whatever devices and processes wrote the checkpoint.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        {WEIGHTS[weights]: nnx.to_pure_dict(params),
                         'buffers': nnx.to_pure_dict(buffers)})
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  logging.info('Restored the step %d %s weights from %s.', step, weights, workdir)
  model = nnx.merge(graphdef, restored[WEIGHTS[weights]], restored['buffers'])
  return model, config
