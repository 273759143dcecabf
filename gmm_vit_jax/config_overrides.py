"""`--config.FIELD=VALUE` arguments for a config that was stored, not built by a flag.

Commands that start from a config written earlier (a run's config.json, a bundle's) take
the same override syntax as train.py's config flag:

    python -m gmm_vit_jax.evaluate --workdir=RUN --config.dataset.name=image_folder \
        --config.dataset.data_dir=DIR

`split_argv` takes them out of the command line before absl parses the rest; `apply`
sets them on the loaded config, each value read as the type of the value it replaces.
"""

import ast
from collections.abc import Sequence

import ml_collections

from gmm_vit_jax import config_files, errors

PREFIX = '--config.'
KINDS = {bool: 'True or False', int: 'a whole number', float: 'a number', str: 'text'}


def split_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """(argv without the overrides, {field: value text}); `--config.a.b=V` and
  `--config.a.b V` both count."""
  rest, overrides, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(PREFIX):
      field, eq, value = arg[len(PREFIX) :].partition('=')
      if not eq:
        if i + 1 >= len(argv):
          raise errors.ConfigError(f'{arg} has no value: write {arg}=VALUE.')
        i += 1
        value = argv[i]
      overrides[field] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parse(field: str, text: str, current):
  """`text` as a value of the type of `current` (any literal where current is None)."""
  try:
    if isinstance(current, bool):
      lowered = text.lower()
      if lowered not in ('true', 'false', '1', '0'):
        raise ValueError
      return lowered in ('true', '1')
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
  except ValueError:
    raise errors.ConfigError(
      f'--config.{field}={text}: expected {KINDS[type(current)]}, '
      f'like its current value {current!r}.'
    ) from None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word: a string.
  return list(value) if isinstance(current, list) and isinstance(value, tuple) else value


def apply(
  config: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
  """A copy of `config` with the overrides set; a ConfigError naming the closest field for
  one it does not have."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field, text in overrides.items():
    config_files.check_field(config, field)
    *parents, name = field.split('.')
    section = config
    for parent in parents:
      section = section[parent]
    if isinstance(section[name], ml_collections.ConfigDict):
      raise errors.ConfigError(
        f'--config.{field} is a section: set its fields, --config.{field}.FIELD=VALUE.'
      )
    section[name] = _parse(field, text, section[name])
  return config
