"""Fine-tuning: the initial weights of a run taken from a trained model (config.init_from).

init_from names one of
  a run workdir           WORKDIR/checkpoints and config.json: its best checkpoint
  an export bundle        DIR/params.safetensors (gmm_vit_jax/export/)
  a reference state_dict  FILE.pth or FILE.pt, converted with the mapping of this run's
                          backbone (gmm_vit_jax/convert)
Every parameter whose flat name and shape fit is loaded; the model's other variables are
fixed by its config and stay as built. Where only the shape differs:
  token tables (TOKEN_TABLES: position embeddings, Swin's relative position bias),
    (E + g*g, C) -> (E + G*G, C) with E leading (class) rows kept; the g x g grid is
    resized bicubically;
  pairwise tables (the element-wise learnable mask's weight), (g*g, g*g) -> (G*G, G*G),
    resized as a (g, g, g, g) array;
  anything else (the head when the class count differs) keeps its fresh initialisation,
and so does every parameter matching a pattern of config.init_from_dont_load (such as
'head\\..*' for a head trained on other classes).
The GMM masks' sigma and alpha are per head and kernel, and their token coordinates are
computed from the grid, so they load whatever the grid.

`check(config)` reads the source before any data loads and refuses it, in one line, when
it is missing or unreadable, or when it would fill less than MIN_FILLED_SHARE of the
model's parameter values (most likely another backbone or shape), unless
config.init_from_partial. The console gets the counts of what was loaded, resized and
re-initialised; the table of every variable goes to WORKDIR/init_from.txt.
"""

import json
import logging
import math
import re

import jax
import ml_collections
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import load as load_safetensors

from gmm_vit_jax import errors, export, sharding, storage
from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training.checkpoint import restore_model
from gmm_vit_jax.training.state import TrainState

LOADED, RESIZED, REINITIALISED = 'loaded', 'resized', 're-initialised'
DONT_LOAD = 'init_from_dont_load'  # The table's reason for a parameter left fresh on purpose.
# Parameters (last name part) laid out over the token grid, and over pairs of its cells.
TOKEN_TABLES = ('pos_embed', 'relative_position_bias')
PAIRWISE_TABLES = ('weight',)  # Of a mask: the element-wise learnable mask.
# Class rows a token table may carry before its grid rows (none, CLS, CLS + distillation).
MAX_LEADING_TOKENS = 2
# The least share of the model's parameter values that the source must fill (loaded or
# resized) unless config.init_from_partial: a new head or patch embedding is a few percent
# of a model, a source of another backbone or width fills next to nothing.
MIN_FILLED_SHARE = 0.5
TABLE_FILE = 'init_from.txt'


def read_source(path: str, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The {flat name: array} variables that `path` (see the module docstring; a local path or
  a storage URL) holds."""
  storage.check_reachable(path)
  if storage.isfile(storage.join(path, export.PARAMS_FILE)):
    return load_safetensors(storage.read_bytes(storage.join(path, export.PARAMS_FILE)))
  if storage.isdir(storage.join(path, 'checkpoints')):
    model, _ = restore_model(path, 'best')
    return export.flat_variables(model)
  if storage.isfile(path) and path.endswith(('.pth', '.pt')):
    from gmm_vit_jax import convert  # Imports torch, which only this source needs.

    state_dict = convert.read_torch_state_dict(path)
    return convert.core.to_flax(convert.reference_mapping(config), state_dict, None)
  raise ConfigError(
    f'init_from={path!r} is neither a run workdir (with checkpoints/), an export '
    f'bundle (with {export.PARAMS_FILE}) nor a .pth/.pt state_dict.'
  )


def _grid_side(tokens: int) -> int | None:
  side = math.isqrt(tokens)
  return side if side * side == tokens else None


def resize_grid(values: np.ndarray, side: int, axes: tuple[int, ...]) -> np.ndarray:
  """Resizes each (g, g) pair of `axes` of `values` to (side, side), bicubically."""
  shape = list(values.shape)
  for axis in axes:
    shape[axis] = side
  return np.asarray(jax.image.resize(values.astype(np.float32), tuple(shape), 'bicubic'))


def _token_table(source: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
  """(E + g*g, C) -> (E + G*G, C), or None when no leading count E makes both grids square."""
  if len(target_shape) != 2 or source.ndim != 2 or source.shape[1] != target_shape[1]:
    return None
  for lead in range(MAX_LEADING_TOKENS + 1):
    old, new = _grid_side(source.shape[0] - lead), _grid_side(target_shape[0] - lead)
    if old and new:
      grid = source[lead:].reshape(old, old, -1)
      return np.concatenate([source[:lead], resize_grid(grid, new, (0, 1)).reshape(new * new, -1)])
  return None


def _pairwise_table(source: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
  """(g*g, g*g) -> (G*G, G*G): a value for every pair of grid cells."""
  if (
    source.ndim != 2
    or len(target_shape) != 2
    or source.shape[0] != source.shape[1]
    or target_shape[0] != target_shape[1]
  ):
    return None
  old, new = _grid_side(source.shape[0]), _grid_side(target_shape[0])
  if not (old and new):
    return None
  grid = source.reshape(old, old, old, old)
  return resize_grid(grid, new, (0, 1, 2, 3)).reshape(new * new, new * new)


def adapt(
  source: dict[str, np.ndarray], target: dict[str, np.ndarray], dont_load: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], list[tuple[str, str, str]]]:
  """Source variables fitted to the target's names and shapes.

  dont_load: regular expressions; target names that fully match one keep their own values.
  Returns (values, table): values has every target name, the source's (as is or resized)
  where it fits, the target's own otherwise; table rows are (name, action, detail).
  """
  values, table = {}, []
  for name, fresh in target.items():
    fresh = np.asarray(fresh)
    why_not = (
      'not in the source'
      if name not in source
      else DONT_LOAD
      if any(re.fullmatch(p, name) for p in dont_load)
      else None
    )
    if why_not:
      values[name] = fresh
      table.append((name, REINITIALISED, why_not))
      continue
    given = np.asarray(source[name])
    if given.shape == fresh.shape:
      values[name] = given.astype(fresh.dtype)
      table.append((name, LOADED, str(fresh.shape)))
      continue
    parts = name.split('.')
    resized = None
    if parts[-1] in TOKEN_TABLES:
      resized = _token_table(given, fresh.shape)
    elif parts[-1] in PAIRWISE_TABLES and len(parts) > 1 and parts[-2] == 'mask':
      resized = _pairwise_table(given, fresh.shape)
    if resized is not None:
      values[name] = resized.astype(fresh.dtype)
      table.append((name, RESIZED, f'{given.shape} -> {fresh.shape}'))
    else:
      values[name] = fresh
      table.append((name, REINITIALISED, f'source {given.shape}, model {fresh.shape}'))
  return values, table


def summary(table: list[tuple[str, str, str]], unused: list[str]) -> str:
  """'L loaded, R resized, I re-initialised, U source variables unused'."""
  counts = {a: sum(row[1] == a for row in table) for a in (LOADED, RESIZED, REINITIALISED)}
  return (
    ', '.join(f'{n} {a}' for a, n in counts.items()) + f', {len(unused)} source variables unused'
  )


def format_table(table: list[tuple[str, str, str]], unused: list[str]) -> str:
  width = max([len(name) for name, _, _ in table] + [8])
  lines = [f'{"variable":<{width}}  {"action":<14}  shape']
  lines += [f'{name:<{width}}  {action:<14}  {detail}' for name, action, detail in table]
  lines.append(
    summary(table, unused)
    + (': ' if unused else '')
    + ', '.join(unused[:8])
    + (' ...' if len(unused) > 8 else '')
  )
  return '\n'.join(lines)


def filled_share(table: list[tuple[str, str, str]], target: dict[str, np.ndarray]) -> float:
  """The share of the target's parameter values that the table loads or resizes; those
  left fresh on purpose (init_from_dont_load) count on neither side."""
  size = lambda name: math.prod(np.shape(target[name]))
  wanted = [(name, action) for name, action, why in table if why != DONT_LOAD]
  filled = sum(size(name) for name, action in wanted if action != REINITIALISED)
  return filled / max(sum(size(name) for name, _ in wanted), 1)


def _source_backbone(path: str) -> str | None:
  """model.name of the config stored beside a run's or a bundle's weights."""
  try:
    stored = json.loads(storage.read_text(storage.join(path, export.CONFIG_FILE)))
    return stored['model']['name']
  except (OSError, ValueError, KeyError, TypeError):  # A .pth, or no readable config.
    return None


def _abstract_params(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """{flat name: zeros of the parameter's shape}, broadcast views that hold no memory."""
  model = nnx.eval_shape(lambda: build_from_config(config, config.seed))
  params = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return {name: np.broadcast_to(np.zeros((), p.dtype), p.shape) for name, p in params.items()}


def _read(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """read_source, its failures one ConfigError each."""
  path = config.init_from
  try:
    return read_source(path, config)
  except Exception as e:  # pylint: disable=broad-except  # Any damage, any reader.
    if not storage.exists(path):
      raise errors.ConfigError(
        f'init_from={path!r} does not exist: give a run workdir, an '
        'export bundle or a .pth state_dict, or leave init_from None.'
      ) from e
    why = ' '.join(str(e).split())
    why = why if len(why) < 300 else why[:300] + ' ...'
    raise errors.ConfigError(
      f'init_from={path!r} cannot be read ({type(e).__name__}: '
      f'{why.rstrip(".")}); give a run workdir, an export bundle or a '
      '.pth state_dict in good order.'
    ) from e


def check(config: ml_collections.ConfigDict) -> None:
  """Raises a ConfigError unless config.init_from reads and fills enough of the model."""
  if not config.init_from:
    return
  source = _read(config)
  target = _abstract_params(config)
  table = adapt(source, target, tuple(config.init_from_dont_load))[1]
  share = filled_share(table, target)
  if share >= MIN_FILLED_SHARE or config.init_from_partial:
    return
  backbone = _source_backbone(config.init_from)
  holds = f'holds a {backbone!r} model and ' if backbone else ''
  raise errors.ConfigError(
    f'init_from={config.init_from!r} {holds}would fill {share:.0%} of the parameter values '
    f'of this {config.model.name!r} model ({summary(table, sorted(set(source) - set(target)))}'
    f'), below the {MIN_FILLED_SHARE:.0%} a fine-tuning needs: give a source of the same '
    'backbone and widths, or --config.init_from_partial=True to load only what fits.'
  )


def _flat(tree: dict) -> dict[str, np.ndarray]:
  return {
    '.'.join(map(str, path)): value for path, value in traverse_util.flatten_dict(tree).items()
  }


def _nested(like: dict, flat: dict[str, np.ndarray]) -> dict:
  paths = traverse_util.flatten_dict(like)
  return traverse_util.unflatten_dict({path: flat['.'.join(map(str, path))] for path in paths})


def initialise(
  state: TrainState, config: ml_collections.ConfigDict, mesh, workdir: str | None = None
) -> TrainState:
  """`state` with its params taken from config.init_from (and the moving average restarted
  from them); the optimizer state stays fresh.

  workdir: where TABLE_FILE, the table of every variable, goes (process 0 writes it).
  """
  source = _read(config)
  values, table = adapt(
    source, jax.device_get(_flat(state.params)), tuple(config.init_from_dont_load)
  )
  unused = sorted(set(source) - set(values))
  where = ''
  if workdir is not None:
    path = storage.join(workdir, TABLE_FILE)
    if jax.process_index() == 0:
      storage.write_atomically(path, format_table(table, unused) + '\n')
    where = f' (every variable: {path})'
  logging.info('Initialised from %s: %s%s.', config.init_from, summary(table, unused), where)
  params = sharding.put_replicated(_nested(state.params, values), mesh)
  ema = None if state.ema is None else sharding.put_replicated(_nested(state.params, values), mesh)
  return state.replace(params=params, ema=ema)
