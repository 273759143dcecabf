"""Every value of a training config checked before any data loads or anything compiles.

The allowed values of every field are in the tables below: RULES for the recipe,
MODEL_RULES for the fields every backbone shares and BACKBONE_RULES for each backbone's
own. `check(config)` raises one ConfigError that lists each bad field with its value and
what is allowed; then the model is built abstractly (shapes only), so the combinations a
backbone needs (a patch size that divides the image, heads that divide a width) are
checked too, in milliseconds.
"""

import math
import numbers

import ml_collections
from flax import nnx

from gmm_vit_jax import errors
from gmm_vit_jax.attention.build import SCORE_KINDS
from gmm_vit_jax.attention.core import IMPLEMENTATIONS
from gmm_vit_jax.attention.masks import MASK_KINDS, MASK_MODES
from gmm_vit_jax.attention.mixture_keys import E_STEPS, PI_KINDS, PI_SCOPES, VARIANTS
from gmm_vit_jax.augment.autoaugment import AUTOAUGMENT_POLICIES
from gmm_vit_jax.augment.randaugment import MAX_LEVEL
from gmm_vit_jax.data.info import DATASET_INFO, check_name
from gmm_vit_jax.models import BACKBONES, DTYPES, build_from_config
from gmm_vit_jax.models.vit import POOLS
from gmm_vit_jax.patches.selection import KINDS, MODES, SELECTIONS


def _int(low: int):
  return (
    lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low,
    f'a whole number >= {low}',
  )


def _number(low: float, high: float = math.inf, *, low_open=False, high_open=False):
  def ok(v):
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
      return False
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

  interval = (
    f'{"(" if low_open else "["}{low}, {high}{")" if high_open or high == math.inf else "]"}'
  )
  return ok, f'a number in {interval}'


def _ints(low: int, count: int | None = None):
  """A tuple or list of whole numbers >= low: `count` of them, or at least one."""
  whole, _ = _int(low)
  size = f'{count}' if count else 'one or more'
  return (
    lambda v: (
      isinstance(v, (tuple, list))
      and (len(v) == count if count else len(v) > 0)
      and all(whole(x) for x in v)
    ),
    f'a tuple of {size} whole numbers >= {low}',
  )


def _numbers(rule):
  """A tuple or list of one or more numbers, each allowed by `rule`."""
  ok, allowed = rule
  return (
    lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(map(ok, v)),
    f'a tuple of one or more of: {allowed}',
  )


def _area():
  """(min, max) fractions of an image: 0 < min <= max < 1."""
  fraction, _ = _number(0, 1, low_open=True, high_open=True)
  return (
    lambda v: (
      isinstance(v, (tuple, list)) and len(v) == 2 and all(map(fraction, v)) and v[0] <= v[1]
    ),
    '(min, max) with 0 < min <= max < 1',
  )


def _choice(*allowed):
  return (lambda v: v in allowed), f'one of {allowed}'


def _bool():
  return (lambda v: isinstance(v, bool)), 'True or False'


def _text():
  return (lambda v: isinstance(v, str) and bool(v)), 'a non-empty string'


def _texts():
  return (
    lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v),
    'a tuple of strings',
  )


def _ok(check):
  """A rule from a function that raises a ValueError for a bad value."""

  def ok(v):
    try:
      check(v)
    except ValueError:
      return False
    return True

  return ok


def _optional(rule):
  ok, allowed = rule
  return (lambda v: v is None or ok(v)), f'None or {allowed}'


def _interval(low: float, high: float, *, low_open=False):
  """A (min, max) pair of numbers in the interval with min <= max."""
  number, allowed = _number(low, high, low_open=low_open)
  return (
    lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(number, v)) and v[0] <= v[1]
  ), f'(min, max) with min <= max, each {allowed}'


POSITIVE = _number(0, low_open=True)
PROBABILITY = _number(0, 1)
FRACTION_BELOW_ONE = _number(0, 1, high_open=True)
# A dropout or drop-path rate: at 1 nothing would pass.
RATE = FRACTION_BELOW_ONE
COUNT = _int(1)

RULES = {
  'seed': _int(0),
  'dataset.name': (_ok(check_name), f"one of {tuple(DATASET_INFO)}, 'image_folder' or 'tfds:NAME'"),
  'dataset.image_size': _optional(_int(1)),
  'dataset.channels': _optional(_choice(1, 3)),
  'dataset.validation_split': _optional(_text()),
  'dataset.class_names': _optional(_texts()),
  'dataset.mean': _optional(_numbers(_number(0, 1))),
  'dataset.std': _optional(_numbers(_number(0, low_open=True))),
  'dataset.background': _optional(_choice('dark', 'light')),
  'dataset.data_dir': _optional(_text()),
  'dataset.download': _bool(),
  'dataset.validation': _optional(_number(0, 1, low_open=True, high_open=True)),
  'dataset.pipeline': _choice('device', 'grain', 'auto'),
  'dataset.resident_share': _number(0, 1, low_open=True),
  'dataset.grain_workers': _int(0),
  'dataset.grain_threads': _int(1),
  'dataset.prefetch': _int(1),
  'batch_size': _int(1),
  'eval_batch_size': _int(1),
  'epochs': _int(1),
  'passes_per_epoch': _int(1),
  'grad_accum_steps': _int(1),
  'ema_decay': _optional(_number(0, 1, high_open=True)),
  'init_from': _optional(_text()),
  'init_from_dont_load': _texts(),
  'init_from_partial': _bool(),
  'optimizer.learning_rate': POSITIVE,
  'optimizer.weight_decay': _number(0),
  'optimizer.b1': FRACTION_BELOW_ONE,
  'optimizer.b2': FRACTION_BELOW_ONE,
  'optimizer.eps': POSITIVE,
  'optimizer.decay_mask_params': _bool(),
  'optimizer.grad_clip_norm': _optional(POSITIVE),
  'optimizer.layer_decay': _number(0, 1, low_open=True),
  'schedule.warmup_epochs': _int(0),
  'schedule.init_learning_rate': _number(0),
  'schedule.end_learning_rate': _number(0),
  'label_smoothing': FRACTION_BELOW_ONE,
  'augment.inception_crop': _bool(),
  'augment.crop_scale': _interval(0, 1, low_open=True),
  'augment.crop_ratio': _interval(0, math.inf, low_open=True),
  'augment.flip': _bool(),
  'augment.crop_padding': _int(0),
  'augment.autoaugment': _choice(*AUTOAUGMENT_POLICIES),
  'augment.randaugment_ops': _int(0),
  'augment.randaugment_magnitude': _number(0, MAX_LEVEL),
  'augment.randaugment_magnitude_std': _number(0),
  'augment.erasing_prob': PROBABILITY,
  'augment.erasing_area': _area(),
  'augment.erasing_min_aspect': _number(0, 1, low_open=True),
  'augment.mix_prob': PROBABILITY,
  'augment.cutmix_prob': PROBABILITY,
  'augment.mixup_alpha': POSITIVE,
  'augment.cutmix_beta': POSITIVE,
  'patch_selection.kind': _choice(*KINDS),
  'patch_selection.keep': _number(0, 1, low_open=True),
  'patch_selection.selection': _choice(*SELECTIONS),
  'patch_selection.mode': _choice(*MODES),
  'patch_selection.probability': PROBABILITY,
  'patch_selection.decay': _number(0),
  'patch_selection.entropy_bins': _int(2),
  'checkpoint.every_steps': _int(1),
  'checkpoint.keep_last': _int(1),
  'checkpoint.keep_best': _bool(),
  'log_every_steps': _int(1),
  'progress_every_s': POSITIVE,
  'progress_max_lines': _int(0),
  'eval_every_epochs': _int(1),
  'profile_steps': _int(0),
  'profile_start_step': _int(0),
  'cpu_keep_step_memory': _bool(),
  'model.name': _choice(*BACKBONES),
}

# The model fields of every backbone.
MODEL_RULES = {
  'model.dtype': _choice(*DTYPES, 'auto'),
  'model.dropout': RATE,
  'model.stochastic_depth': RATE,
  'model.attention.score': _choice(*SCORE_KINDS),
  'model.attention.qkv_bias': _bool(),
  'model.attention.implementation': _choice(*IMPLEMENTATIONS),
  'model.attention.max_slices': COUNT,
  'model.mask.kind': _choice(*MASK_KINDS),
  'model.mask.num_kernels': COUNT,
  'model.mask.mode': _choice(*MASK_MODES),
  'model.mask.cutoff': _bool(),
}

# Those of model.attention.score='mixture_of_keys'.
MIXTURE_RULES = {
  'model.attention.mixture.num_keys': COUNT,
  'model.attention.mixture.variant': _choice(*VARIANTS),
  'model.attention.mixture.e_step': _choice(*E_STEPS),
  'model.attention.mixture.pi': _choice(*PI_KINDS),
  'model.attention.mixture.pi_scope': _choice(*PI_SCOPES),
  'model.attention.mixture.learn_variance': _bool(),
}

# Each backbone's own model fields (gmm_vit_jax/models/<name>.py).
BACKBONE_RULES = {
  'vit': {
    'model.patch_size': COUNT,
    'model.dim': COUNT,
    'model.depth': COUNT,
    'model.num_heads': COUNT,
    'model.head_dim': COUNT,
    'model.mlp_ratio': POSITIVE,
    'model.pool': _choice(*POOLS),
    'model.emb_dropout': RATE,
  },
  'cait': {
    'model.patch_size': COUNT,
    'model.dim': COUNT,
    'model.depth': COUNT,
    'model.class_depth': COUNT,
    'model.num_heads': COUNT,
    'model.head_dim': COUNT,
    'model.mlp_dim': COUNT,
    'model.emb_dropout': RATE,
  },
  'pit': {
    'model.patch_size': COUNT,
    'model.dim': COUNT,
    'model.depths': _ints(1),
    'model.num_heads': _ints(1),
    'model.head_dim': COUNT,
    'model.mlp_ratio': POSITIVE,
    'model.emb_dropout': RATE,
  },
  'swin': {
    'model.patch_size': COUNT,
    'model.embed_dim': COUNT,
    'model.depths': _ints(1),
    'model.num_heads': _ints(1),
    'model.window_size': COUNT,
    'model.mlp_ratio': POSITIVE,
  },
  't2t': {
    'model.num_token_layers': COUNT,
    'model.token_dim': COUNT,
    'model.embed_dim': COUNT,
    'model.depth': COUNT,
    'model.num_heads': COUNT,
    'model.mlp_ratio': POSITIVE,
  },
  'hatnet': {
    'model.stem_strides': _ints(1, count=2),
    'model.dims': _ints(1),
    'model.head_dim': COUNT,
    'model.depths': _ints(1),
    'model.expansions': _ints(1),
    'model.kernel_sizes': _ints(1),
    'model.grid_sizes': _ints(1),
    'model.ds_ratios': _ints(1),
    'model.head_dropout': RATE,
  },
}


def rules(config: ml_collections.ConfigDict) -> dict:
  """{field: (ok, allowed)} of every field `config` must have, for its backbone and score."""
  table = dict(RULES)
  model = config.get('model') or {}
  if model.get('name') in BACKBONE_RULES:
    table.update(MODEL_RULES)
    table.update(BACKBONE_RULES[model.name])
    attention = model.get('attention') or {}
    # Without its section, building the score says which section is missing.
    if attention.get('score') == 'mixture_of_keys' and 'mixture' in attention:
      table.update(MIXTURE_RULES)
  return table


def _get(config: ml_collections.ConfigDict, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """One line per bad field or combination: field, value, what is allowed."""
  found = []
  for field, (ok, allowed) in rules(config).items():
    try:
      value = _get(config, field)
    except (KeyError, AttributeError):
      found.append(f'{field} is missing (gmm_vit_jax/configs_common.py has every field)')
      continue
    if not ok(value):
      found.append(f'{field}={value!r} is not allowed: use {allowed}')
  if found:
    return found
  if config.dataset.name == 'tiny_imagenet' and not config.dataset.data_dir:
    found.append(
      "dataset.name='tiny_imagenet' needs dataset.data_dir, the unzipped "
      'tiny-imagenet-200 folder (it is not downloaded automatically)'
    )
  if config.schedule.warmup_epochs >= config.epochs:
    found.append(
      f'schedule.warmup_epochs={config.schedule.warmup_epochs} must be below epochs={config.epochs}'
    )
  augment = config.augment
  if augment.autoaugment != 'none' and augment.randaugment_ops > 0:
    found.append(
      f'augment.autoaugment={augment.autoaugment!r} and augment.randaugment_ops='
      f"{augment.randaugment_ops} are two policies: set autoaugment='none' or "
      'randaugment_ops=0'
    )
  if augment.inception_crop and augment.crop_padding > 0:
    found.append(
      f'augment.inception_crop=True and augment.crop_padding={augment.crop_padding} '
      'are two crops: set crop_padding=0 or inception_crop=False'
    )
  selection = config.patch_selection
  if (
    selection.kind != 'none'
    and selection.mode == 'drop'
    and not BACKBONES[config.model.name].can_drop_tokens
  ):
    droppers = tuple(name for name, cls in BACKBONES.items() if cls.can_drop_tokens)
    found.append(
      f'patch_selection.kind={selection.kind!r} drops tokens, which '
      f"model.name={config.model.name!r} cannot: use patch_selection.kind='none', "
      f"patch_selection.mode='zero', or one of the backbones {droppers}"
    )
  if not found:
    try:
      nnx.eval_shape(lambda: build_from_config(config))
    except (ValueError, TypeError) as e:
      found.append(str(e).rstrip('.'))
  return found


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError listing every problem of `config`."""
  found = problems(config)
  if len(found) == 1:
    raise errors.ConfigError(f'{found[0]}.')
  if found:
    raise errors.ConfigError(f'{len(found)} config problems: ' + '; '.join(found) + '.')
