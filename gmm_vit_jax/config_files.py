"""Config files read as the commands read them, from any directory, with one-line errors
for every way they fail.

A config file is a Python file with `get_config(arg=...)` returning an ml-collections
ConfigDict; `PATH:ARG` passes ARG. Its overrides are `--config.FIELD.SUBFIELD=VALUE`
flags. Every failure here is a ConfigError naming the file or field and the fix: a path
that is not a file, a syntax error, an argument get_config refuses, a field name that
does not exist (with the closest one that does).

A file builds on the shared recipe and model sections with
`from gmm_vit_jax import configs_common as common`, which resolves wherever the package is
installed. A file inside a package folder (a folder with an __init__.py, as the
repository's configs/) may also import its siblings, `from configs import vit_cifar10`:
Python resolves that for a script run from the folder above the package, and
`make_importable` lets the commands resolve it the same way from any other directory.
"""

import difflib
import importlib.util
import os
import sys
import types

import ml_collections

from gmm_vit_jax import errors


def _suggestion(name: str, candidates) -> str:
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  return f' (did you mean {close[0]!r}?)' if close else ''


def package_root(path: str) -> str | None:
  """The folder above the outermost package folder holding the file `path`, or None when
  the file's folder is not a package."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isfile(os.path.join(folder, '__init__.py')):
    return None
  while os.path.isfile(os.path.join(os.path.dirname(folder), '__init__.py')):
    folder = os.path.dirname(folder)
  return os.path.dirname(folder)


def make_importable(path: str) -> None:
  """Puts the package root of the config file `path` at the end of sys.path, so its
  sibling imports resolve; a file outside a package changes nothing. Appended, so
  installed packages keep precedence."""
  root = package_root(path)
  if root is not None and root not in sys.path:
    sys.path.append(root)


def module(path: str, *, flag: str = '--config', needs: str = 'get_config') -> types.ModuleType:
  """The config file at `path`, run as a module whose sibling imports resolve from any
  working directory (make_importable); `needs` names the function it must define
  (get_config, or shrink for the size files that reproduce takes)."""
  if not os.path.isfile(path):
    folder, stem = os.path.split(os.path.splitext(path)[0])
    stems = (
      [os.path.splitext(f)[0] for f in os.listdir(folder or '.') if f.endswith('.py')]
      if os.path.isdir(folder or '.')
      else []
    )
    close = difflib.get_close_matches(stem, stems, n=1)
    hint = f' (did you mean {os.path.join(folder, close[0] + ".py")}?)' if close else ''
    what = 'a directory' if os.path.isdir(path) else 'no file'
    raise errors.ConfigError(
      f'{flag}={path}: {what} there{hint}; give a config file such as configs/quickstart.py.'
    )
  with open(path, encoding='utf-8') as f:
    source = f.read()
  try:
    compile(source, path, 'exec')
  except SyntaxError as e:
    raise errors.ConfigError(f'{path} line {e.lineno}: {e.msg}; fix the config file.') from e
  make_importable(path)
  spec = importlib.util.spec_from_file_location(
    os.path.splitext(os.path.basename(path))[0] + '_config', path
  )
  loaded = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(loaded)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
      f'{path} fails to load: {type(e).__name__}: {str(e).rstrip(".")}.'
    ) from e
  if not callable(getattr(loaded, needs, None)):
    raise errors.ConfigError(
      f'{path} has no {needs}() function; a config file defines '
      'get_config(arg) returning an ml_collections.ConfigDict'
      + ('' if needs == 'get_config' else f', a size file {needs}(config)')
      + '.'
    )
  return loaded


def load(path_and_arg: str, *, flag: str = '--config') -> ml_collections.ConfigDict:
  """The ConfigDict of `PATH` or `PATH:ARG`."""
  path, colon, arg = path_and_arg.partition(':')
  get_config = module(path, flag=flag).get_config
  try:
    config = get_config(arg) if colon else get_config()
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, TypeError) and colon and 'positional argument' in str(e):
      raise errors.ConfigError(
        f'{flag}={path_and_arg}: {path} takes no argument after ":"; give {flag}={path}.'
      ) from e
    raise errors.ConfigError(f'{flag}={path_and_arg}: {str(e).rstrip(".")}.') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(
      f'{path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict.'
    )
  return config


def field_names(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every dotted field name of `config`, sections and leaves."""
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f'{prefix}{key}.')
  return names


def check_field(config: ml_collections.ConfigDict, field: str, *, flag: str = '--config') -> None:
  """Raises a ConfigError when `config` has no field `field` (dotted), naming the closest."""
  node, walked = config, []
  for part in field.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      raise errors.ConfigError(f'{flag}.{field}: {".".join(walked)} is a value, not a section.')
    if part not in node:
      # A dotted name anywhere in the config first (--config.learning_rate finds
      # optimizer.learning_rate), then the names of this section.
      hint = _suggestion(field, field_names(config)) or _suggestion(
        '.'.join(walked + [part]), ['.'.join(walked + [k]) for k in node.keys()]
      )
      where = f'section {".".join(walked)}' if walked else 'the config'
      raise errors.ConfigError(
        f'{flag}.{field}: {where} has no field {part!r}{hint}; '
        'gmm_vit_jax/configs_common.py lists every field.'
      )
    node = node[part]
    walked.append(part)
