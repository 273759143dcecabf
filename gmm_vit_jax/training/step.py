"""The jitted train and eval steps.

Each step reads its batch from the device-resident dataset by index (or takes it as
streamed), augments it on the device, and adds its metrics to sums kept on the device;
nothing waits for the host inside the step loop.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from gmm_vit_jax import augment, patches, precision
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.training.state import Metrics, TrainState, ema_decay


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
  """(B, C) logits, (B, C) target distributions -> (B,) smoothed cross-entropy."""
  num_classes = logits.shape[-1]
  targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def _rows(images, labels, index):
  """The batch: rows `index` of resident arrays, or the arrays themselves when index is None."""
  return (images, labels) if index is None else (images[index], labels[index])


def make_train_step(
  graphdef: nnx.GraphDef,
  tx: optax.GradientTransformation,
  config: ml_collections.ConfigDict,
  info: dict,
  *,
  out_sharding,
  donate: bool = True,
) -> Callable:
  """Returns step(state, metrics, images, labels, index, select_patches) -> (state, metrics).

  With config.ema_decay set, state.ema follows the params by Polyak averaging
  (optax.incremental_update with step size 1 - ema_decay) after every update.

  donate: the step reuses the buffers of the state and metrics it is given for the ones
  it returns (benchmarks/levers.py measures the memory this saves).

  images: (N, H, W, C) uint8 and labels (N,) int32, the whole training split on the
  device; index: (B,) int32 rows of this step's batch, sharded over 'data'. Or, from a
  streaming pipeline, images (B, H, W, C) and labels (B,) of the batch itself, sharded
  over 'data', and index None.
  select_patches (static): filter this batch with the configured patch heuristic; the
  host draws it per batch (patches.application_probability), so each choice compiles once.
  """
  seed_key = jax.random.key(config.seed)
  decay = ema_decay(config)

  def step(state: TrainState, metrics: Metrics, images, labels, index, select_patches: bool):
    with precision.products_for(config.model.dtype):
      return _step(state, metrics, images, labels, index, select_patches)

  def _step(state: TrainState, metrics: Metrics, images, labels, index, select_patches: bool):
    aug_key, dropout_key, select_key = jax.random.split(jax.random.fold_in(seed_key, state.step), 3)
    x, targets = augment.augment_batch(
      *_rows(images, labels, index),
      aug_key,
      config.augment,
      num_classes=info['num_classes'],
      mean=info['mean'],
      std=info['std'],
      mesh=out_sharding.mesh,
    )
    selected = {}
    if select_patches:
      cfg = config.patch_selection
      # The heuristics score pixels in [0, 1], so they see the augmented image un-normalised.
      token_index = patches.select_tokens(
        x * jnp.asarray(info['std']) + jnp.asarray(info['mean']),
        select_key,
        cfg,
        patch_size=config.model.patch_size,
      )
      if cfg.mode == 'drop':
        selected['token_index'] = token_index
      else:
        x = patches.zero_dropped_patches(x, token_index, patch_size=config.model.patch_size)

    def loss_fn(params):
      # The Rngs live inside the differentiated function: NNX state must not cross traces.
      model = nnx.merge(graphdef, params, state.buffers)
      logits = model(x, deterministic=False, rngs=nnx.Rngs(dropout=dropout_key), **selected)
      # Buffers a training forward pass sets (the mixture-of-keys E-step's pi) leave as aux.
      buffers = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
      return cross_entropy(logits, targets, config.label_smoothing).mean(), (logits, buffers)

    (loss, (logits, buffers)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if state.ema is not None:
      # The average moves only when the params do: once per k micro-batches under MultiSteps.
      moved = tx.has_updated(opt_state) if isinstance(tx, optax.MultiSteps) else True
      state = state.replace(
        ema=optax.incremental_update(params, state.ema, jnp.where(moved, 1.0 - decay, 0.0))
      )
    state = state.replace(step=state.step + 1, params=params, buffers=buffers, opt_state=opt_state)
    batch = jnp.float32(targets.shape[0])
    correct = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    return state, metrics + Metrics(
      loss=loss * batch,
      correct=correct.astype(jnp.float32),
      count=batch,
      nonfinite=(~jnp.isfinite(loss)).astype(jnp.float32),
      grad_norm=optax.tree.norm(grads).astype(jnp.float32),
      param_norm=optax.tree.norm(params).astype(jnp.float32),
      steps=jnp.float32(1),
    )

  return jax.jit(
    step, donate_argnums=(0, 1) if donate else (), static_argnums=(5,), out_shardings=out_sharding
  )


def make_eval_step(
  graphdef: nnx.GraphDef, info: dict, *, out_sharding, model_dtype: str
) -> Callable:
  """Returns step(params, buffers, metrics, images, labels, index, weight) -> metrics.

  images, labels, index: as for the train step; weight: (B,) 1 for real rows, 0 for the
  padding that fills the last batch. model_dtype: the config's model.dtype, which sets
  the products' precision (gmm_vit_jax/precision.py).
  """

  def step(params, buffers, metrics: Metrics, images, labels, index, weight):
    images, y = _rows(images, labels, index)
    x = normalize(images, info['mean'], info['std'])
    with precision.products_for(model_dtype):
      logits = nnx.merge(graphdef, params, buffers)(x, deterministic=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return metrics + Metrics(
      loss=jnp.sum(loss * weight),
      correct=jnp.sum(correct * weight),
      count=jnp.sum(weight),
      nonfinite=jnp.sum((~jnp.isfinite(loss)) * weight),
    )

  return jax.jit(step, donate_argnums=(2,), out_shardings=out_sharding)
