"""The package is a house of floors, and no import points up a floor.

A module may import from its own floor and the floors below it, never from one above: the
attention, augmentation and data code stays usable without a trainer, the models without a
data pipeline's devices, and the export library without the checkpoints of a run. The floors
are written out here, not inferred, so that moving a module up or down is a decision someone
takes in this file. Lowest first:

  0. foundations: errors and the one-line reports of the commands, the console, runtime and
     platform facts, the device mesh, initialisers and the Linear layer, the private JAX
     names, the shared config pieces, how config files and overrides are read, and local
     and bucket storage; none knows a model.
  1. building blocks on arrays: attention, the augmentation, the datasets and their batches.
  2. models: the backbones, built from the attention.
  3. what works on a model: patch selection, the PyTorch twins and their conversion, the
     inference bundles, the pictures of the masks.
  4. training: the one trainer.
  5. commands: the `python -m` programs, which may use everything.

The imports are read with `ast` (nothing is executed), those inside functions included: a
lazy import is still an arrow up.
"""

import ast
import pathlib

PACKAGE = 'gmm_vit_jax'
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

FLOORS = (
  (
    'errors',
    'cli',
    'console',
    'cpu_runtime',
    'platforms',
    'sharding',
    'initializers',
    'cpu_forms',
    'linear',
    'published',
    'jax_private',
    'configs_common',
    'config_files',
    'config_overrides',
    'storage',
  ),
  ('attention', 'augment', 'data'),
  ('models',),
  ('patches', 'torch_models', 'convert', 'export', 'visualize', 'onnx_export', 'precision'),
  ('training',),
  (
    'export.__main__',
    'convert.__main__',
    'complexity',
    'lower',
    'predict',
    'reproduce',
    'benchmarks',
    'train',
    'evaluate',
  ),
)


def module_names(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """{dotted module name: file} of every module of the package, packages included."""
  names = {}
  for path in sorted(root.rglob('*.py')):
    parts = (package,) + path.relative_to(root).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    names['.'.join(parts)] = path
  return names


def floor_of(module: str, package: str, floors) -> int | None:
  """The floor of the longest entry of `floors` that is module or a package above it."""
  inside = module.split('.')[1:]
  for length in range(len(inside), 0, -1):
    for number, names in enumerate(floors):
      if '.'.join(inside[:length]) in names:
        return number
  return None


def imported_modules(module: str, path: pathlib.Path, modules) -> set[str]:
  """The package's modules that `module` imports anywhere in its file."""
  found = set()
  is_package = path.name == '__init__.py'
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = module.split('.')[: len(module.split('.')) - node.level + is_package]
        base = '.'.join(anchor + ([base] if base else []))
      for alias in node.names:
        # `from a import b` imports module a.b when there is one, else a name of module a.
        found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
  return {name for name in found if name in modules}


def upward_imports(root: pathlib.Path, package: str, floors) -> list[str]:
  """'importer (floor i) imports imported (floor j)' for every import with j > i."""
  modules = module_names(root, package)
  found = []
  for module, path in modules.items():
    here = floor_of(module, package, floors)
    for imported in sorted(imported_modules(module, path, modules)):
      there = floor_of(imported, package, floors)
      if here is not None and there is not None and there > here:
        found.append(f'{module} (floor {here}) imports {imported} (floor {there})')
  return found


def test_no_import_points_up_a_floor():
  assert upward_imports(ROOT, PACKAGE, FLOORS) == []


def test_every_module_has_a_floor():
  modules = module_names(ROOT, PACKAGE)
  assert [m for m in modules if m != PACKAGE and floor_of(m, PACKAGE, FLOORS) is None] == []


def test_an_upward_import_is_found(tmp_path):
  """The walk finds an arrow up wherever it hides: a lazy import, a relative one."""
  package = tmp_path / 'house'
  for folder in ('low', 'high'):
    (package / folder).mkdir(parents=True)
    (package / folder / '__init__.py').write_text('')
  (package / '__init__.py').write_text('')
  (package / 'high' / 'top.py').write_text('from house.low import base\n')
  (package / 'low' / 'base.py').write_text('def f():\n  from house.high import top\n')
  (package / 'low' / 'rel.py').write_text('from ..high.top import name\nfrom . import base\n')
  floors = (('low',), ('high',))
  assert upward_imports(package, 'house', floors) == [
    'house.low.base (floor 0) imports house.high.top (floor 1)',
    'house.low.rel (floor 0) imports house.high.top (floor 1)',
  ]
