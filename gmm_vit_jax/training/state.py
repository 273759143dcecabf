"""The train state: one pytree of arrays, what a checkpoint holds."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.models import build_from_config


@flax.struct.dataclass
class TrainState:
  """step: () int32; params: trainable arrays as a nested dict (nnx.to_pure_dict);
  buffers: the model's other variables (fixed embeddings), likewise; opt_state: optax's;
  ema: optax.EmaState of the params (its .ema holds the averaged weights), None when
  config.ema_decay is off."""

  step: jax.Array
  params: Any
  buffers: Any
  opt_state: Any
  ema: Any = None


@flax.struct.dataclass
class Metrics:
  """Sums over the steps since the last log, kept on the device: no host sync per step.

  loss, correct, nonfinite: over the `count` examples. grad_norm, param_norm: the global
  L2 norms of each train step's gradient (of its micro-batch, before clipping) and of the
  parameters after its update, over the `steps` train steps; evaluation leaves them 0.
  """

  loss: jax.Array
  correct: jax.Array
  count: jax.Array
  nonfinite: jax.Array
  grad_norm: jax.Array | float = 0.0
  param_norm: jax.Array | float = 0.0
  steps: jax.Array | float = 0.0

  @classmethod
  def zeros(cls) -> 'Metrics':
    # Separate buffers: the train step donates each field.
    z = lambda: jax.numpy.zeros((), jax.numpy.float32)
    return cls(
      loss=z(), correct=z(), count=z(), nonfinite=z(), grad_norm=z(), param_norm=z(), steps=z()
    )

  def __add__(self, other: 'Metrics') -> 'Metrics':
    return jax.tree.map(lambda a, b: a + b, self, other)

  def summary(self, prefix: str) -> dict[str, float]:
    """<prefix>_loss and <prefix>_accuracy; with train steps counted, also the mean
    <prefix>_grad_norm and <prefix>_param_norm."""
    count = max(float(self.count), 1.0)
    result = {
      f'{prefix}_loss': float(self.loss) / count,
      f'{prefix}_accuracy': float(self.correct) / count,
    }
    steps = float(self.steps)
    if steps:
      result[f'{prefix}_grad_norm'] = float(self.grad_norm) / steps
      result[f'{prefix}_param_norm'] = float(self.param_norm) / steps
    return result


def ema_decay(config: ml_collections.ConfigDict) -> float | None:
  """config.ema_decay checked: None when off (None or 0), else the decay in (0, 1)."""
  decay = config.ema_decay
  if not decay:
    return None
  if not 0 < decay < 1:
    raise ConfigError(f'ema_decay={decay!r} must be in (0, 1), or None or 0 for no EMA.')
  return float(decay)


def _init(config: ml_collections.ConfigDict, tx: optax.GradientTransformation):
  def init() -> TrainState:
    _, params, buffers = nnx.split(build_from_config(config, config.seed), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      buffers=nnx.to_pure_dict(buffers),
      opt_state=tx.init(params),
      ema=jax.tree.map(jnp.copy, params) if ema_decay(config) else None,
    )

  return init


def create_train_state(
  config: ml_collections.ConfigDict,
  tx: optax.GradientTransformation,
  sharding,
  *,
  abstract: bool = False,
) -> tuple[nnx.GraphDef, TrainState]:
  """The model's graph definition and its initial train state, created under jit directly
  with `sharding`, so every process of a multi-host run computes the same state in place.

  abstract: the state as jax.ShapeDtypeStructs carrying `sharding`, without running the
  initialisers: all that lowering a step needs (gmm_vit_jax/lower.py).
  """
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_from_config(config, config.seed)))
  init = jax.jit(_init(config, tx), out_shardings=sharding)
  return graphdef, jax.eval_shape(init) if abstract else init()


def state_layout(
  config: ml_collections.ConfigDict, tx: optax.GradientTransformation
) -> list[tuple[str, tuple, str]]:
  """(path, shape, dtype) of every leaf of the train state, computed without arithmetic:
  two configs whose layouts differ cannot share a checkpoint."""
  leaves, _ = jax.tree.flatten_with_path(jax.eval_shape(_init(config, tx)))
  return [(jax.tree_util.keystr(path), x.shape, str(x.dtype)) for path, x in leaves]
