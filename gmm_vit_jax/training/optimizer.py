"""The learning-rate schedule and AdamW of the paper's recipe (docs/design.md, "The recipe")."""

import jax
import ml_collections
import optax

from gmm_vit_jax.errors import ConfigError

MASK_PARAM_NAMES = ('sigma', 'alpha')


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Per step: linear warmup from init_learning_rate, then cosine to end_learning_rate."""
  s = config.schedule
  if not 0 <= s.warmup_epochs < config.epochs:
    raise ConfigError(f'schedule.warmup_epochs={s.warmup_epochs} must be at least 0 and below '
                      f'epochs={config.epochs}.')
  peak, decay_steps = config.optimizer.learning_rate, config.epochs * steps_per_epoch
  if s.warmup_epochs == 0:  # The same cosine, without optax's notice about an empty warmup.
    return optax.cosine_decay_schedule(init_value=peak, decay_steps=decay_steps,
                                       alpha=s.end_learning_rate / peak if peak else 0.0)
  return optax.warmup_cosine_decay_schedule(
      init_value=s.init_learning_rate, peak_value=peak,
      warmup_steps=s.warmup_epochs * steps_per_epoch, decay_steps=decay_steps,
      end_value=s.end_learning_rate)


def _decay_mask(params, decay_mask_params: bool):
  """True for every parameter AdamW decays; GMM sigma/alpha optionally excluded.

  params: the nested dict of arrays the train state holds (nnx.to_pure_dict).
  """
  def decays(path, _):
    return decay_mask_params or path[-1].key not in MASK_PARAM_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW on the schedule, optionally clipped; with grad_accum_steps = k > 1, optax.MultiSteps
  averages the gradients of k train steps (micro-batches) and updates once.

  steps_per_epoch counts train steps (micro-batches). The schedule stays a function of the
  train step: update n takes the learning rate of train step n * k.
  """
  o = config.optimizer
  accum = config.grad_accum_steps
  if not (isinstance(accum, int) and accum >= 1):
    raise ConfigError(f'grad_accum_steps={accum!r} must be an integer >= 1.')
  schedule = learning_rate_schedule(config, steps_per_epoch)
  adamw = optax.adamw(
      (lambda update: schedule(update * accum)) if accum > 1 else schedule,
      b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
      mask=lambda params: _decay_mask(params, o.decay_mask_params))
  tx = adamw if o.grad_clip_norm is None else optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm), adamw)
  return optax.MultiSteps(tx, every_k_schedule=accum) if accum > 1 else tx
