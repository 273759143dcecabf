"""Config files named by path, from any directory.

A config file is plain Python with a get_config(). It builds on the shared recipe and model
sections with `from gmm_vit_jax import configs_common as common`, which resolves wherever
the package is installed. A file inside a package folder (a folder with an __init__.py, as
the repository's configs/) may also import its siblings, `from configs import vit_cifar10`;
Python resolves that for a script run from the folder above the package, and
`make_importable` lets the tools resolve it the same way from any other directory.
"""

import os
import sys
from collections.abc import Sequence


def flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of --name=VALUE or --name VALUE in argv (the last one given), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def package_root(path: str) -> str | None:
  """The folder above the outermost package folder holding the file `path`, or None when
  the file's folder is not a package."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isfile(os.path.join(folder, '__init__.py')):
    return None
  while os.path.isfile(os.path.join(os.path.dirname(folder), '__init__.py')):
    folder = os.path.dirname(folder)
  return os.path.dirname(folder)


def make_importable(config: str | None) -> None:
  """Puts the package root of the config file `config` (PATH or PATH:ARGUMENT, as --config
  takes it) at the end of sys.path, so its sibling imports resolve; a config outside a
  package, or None, changes nothing. Appended, so installed packages keep precedence."""
  if not config:
    return
  path = config if os.path.isfile(config) else config.rsplit(':', 1)[0]
  root = package_root(path) if os.path.isfile(path) else None
  if root is not None and root not in sys.path:
    sys.path.append(root)
