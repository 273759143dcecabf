"""The learning-rate schedule and AdamW of the paper's recipe (docs/design.md, "The recipe"),
and the layer-wise learning-rate decay of fine-tuning."""

import bisect
import math

import jax
import ml_collections
import optax

from gmm_vit_jax.errors import ConfigError

MASK_PARAM_NAMES = ('sigma', 'alpha')
# Top-level modules of the backbones that turn pixels into tokens: layer 0.
EMBEDDING = (
  'patch_embed',
  'patch_norm',
  'pos_embed',
  'cls_token',
  'tokens_to_token',
  'stem_conv1',
  'stem_conv2',
  'stem_norm',
)
# Top-level modules after the last block: the top layer, with the full learning rate.
TOP = ('norm', 'head')
# Modules between two stages (Swin's patch merging, PiT's pooling, HAT-Net's
# downsampling): each joins the last block of the stage it ends.
BETWEEN_STAGES = ('downsample', 'pools', 'downsamples')


def learning_rate_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Per step: linear warmup from init_learning_rate, then cosine to end_learning_rate."""
  s = config.schedule
  if not 0 <= s.warmup_epochs < config.epochs:
    raise ConfigError(
      f'schedule.warmup_epochs={s.warmup_epochs} must be at least 0 and below '
      f'epochs={config.epochs}.'
    )
  peak, decay_steps = config.optimizer.learning_rate, config.epochs * steps_per_epoch
  if s.warmup_epochs == 0:  # The same cosine, without optax's notice about an empty warmup.
    return optax.cosine_decay_schedule(
      init_value=peak, decay_steps=decay_steps, alpha=s.end_learning_rate / peak if peak else 0.0
    )
  return optax.warmup_cosine_decay_schedule(
    init_value=s.init_learning_rate,
    peak_value=peak,
    warmup_steps=s.warmup_epochs * steps_per_epoch,
    decay_steps=decay_steps,
    end_value=s.end_learning_rate,
  )


def _decay_mask(params, decay_mask_params: bool):
  """True for every parameter AdamW decays; GMM sigma/alpha optionally excluded.

  params: the nested dict of arrays the train state holds (nnx.to_pure_dict).
  """

  def decays(path, _):
    return decay_mask_params or path[-1].key not in MASK_PARAM_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def _block_position(keys: tuple[str, ...]) -> tuple | None:
  """Where the block holding the parameter at `keys` sits, as a tuple that sorts in the
  order the tokens meet the blocks; math.inf in place of the block index for a module
  between stages; None outside the blocks.

  ViT and T2T: blocks.<i>; CaiT: patch_layers.<i>, then class_layers.<i>; Swin:
  stages.<s>.blocks.<i> and stages.<s>.downsample; PiT and HAT-Net: stages.<s>.<i>, with
  pools.<s> or downsamples.<s> after stage s.
  """
  name = keys[0]
  if name == 'blocks':
    return (int(keys[1]),)
  if name in ('patch_layers', 'class_layers'):
    return (name == 'class_layers', int(keys[1]))
  if name in BETWEEN_STAGES:
    return (int(keys[1]), math.inf)
  if name == 'stages':
    stage, inner = int(keys[1]), keys[2]
    if inner in BETWEEN_STAGES:
      return (stage, math.inf)
    return (stage, int(keys[3] if inner == 'blocks' else inner))
  return None


def layer_ids(params) -> tuple[dict, int]:
  """(the layer of every parameter, L): the embedding is layer 0, the blocks 1 to L in the
  order the tokens pass them (a hierarchical backbone's stages in turn), the final norm and
  the head L + 1, as BEiT's layer-wise decay numbers a ViT.

  params: the nested dict of arrays (or shapes) the train state holds.
  Raises ValueError for a parameter of no known place, rather than guess its layer.
  """
  keys = lambda path: tuple(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  blocks = sorted(
    {
      p
      for p in (_block_position(keys(path)) for path, _ in leaves)
      if p is not None and p[-1] != math.inf
    }
  )

  def layer(path, _):
    names = keys(path)
    if names[0] in EMBEDDING:
      return 0
    position = _block_position(names)
    if position is not None:
      return bisect.bisect_right(blocks, position)
    if names[0] in TOP:
      return len(blocks) + 1
    raise ValueError(
      f'optimizer.layer_decay: the parameter {".".join(names)} belongs to no '
      'known layer (gmm_vit_jax/training/optimizer.py lists them).'
    )

  return jax.tree_util.tree_map_with_path(layer, params), len(blocks)


def layer_scales(params, decay: float):
  """The factor on the learning rate of every parameter: decay ** (L + 1 - layer), 1 for
  the head and decay ** (L + 1) for the embedding."""
  ids, num_blocks = layer_ids(params)
  return jax.tree.map(lambda layer: decay ** (num_blocks + 1 - layer), ids)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer's factor (layer_scales). After AdamW it scales the
  parameter's learning rate, weight decay included, as a per-layer learning rate does."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f, updates, layer_scales(updates, decay)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """AdamW on the schedule, optionally clipped, optionally with layer-wise learning-rate
  decay (optimizer.layer_decay < 1, scale_by_layer); with grad_accum_steps = k > 1,
  optax.MultiSteps averages the gradients of k train steps (micro-batches) and updates once.

  steps_per_epoch counts train steps (micro-batches). The schedule stays a function of the
  train step: update n takes the learning rate of train step n * k.
  """
  o = config.optimizer
  accum = config.grad_accum_steps
  if not (isinstance(accum, int) and accum >= 1):
    raise ConfigError(f'grad_accum_steps={accum!r} must be an integer >= 1.')
  if not 0 < o.layer_decay <= 1:
    raise ConfigError(f'optimizer.layer_decay={o.layer_decay!r} must be in (0, 1]; 1 is off.')
  schedule = learning_rate_schedule(config, steps_per_epoch)
  adamw = optax.adamw(
    (lambda update: schedule(update * accum)) if accum > 1 else schedule,
    b1=o.b1,
    b2=o.b2,
    eps=o.eps,
    weight_decay=o.weight_decay,
    mask=lambda params: _decay_mask(params, o.decay_mask_params),
  )
  if o.layer_decay != 1:
    adamw = optax.chain(adamw, scale_by_layer(o.layer_decay))
  tx = (
    adamw
    if o.grad_clip_norm is None
    else optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
  )
  return optax.MultiSteps(tx, every_k_schedule=accum) if accum > 1 else tx
