"""The installed package: a wheel built from this tree, installed into a fresh virtual
environment, runs its commands, the own-model example of docs/package.md and a training
run of a config file given by path, all from a directory outside the repository.

Offline and quick: the wheel is built with the setuptools of this environment and
installed without its dependencies, which the new environment reads from this one's
site-packages (a .pth file; `venv --system-site-packages` would reach the base
interpreter's instead, where they are not).
"""

import json
import os
import re
import shutil
import site
import subprocess
import sys

import pytest

from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FILES = ('pyproject.toml', 'README.md', 'gmm_vit_jax')


def docs_example(name: str = 'package.md') -> str:
  """The Python block of docs/<name> that defines MyModel: its own-model example."""
  with open(os.path.join(ROOT, 'docs', name)) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  (example,) = [b for b in blocks if 'class MyModel' in b]
  return example


def _run(args, cwd, *, codes=(0,), **env):
  environ = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run(
    args, cwd=cwd, env={**environ, **env}, capture_output=True, text=True, timeout=300
  )
  assert done.returncode in codes, f'{args} exited {done.returncode}:\n{done.stderr[-3000:]}'
  return done


@pytest.fixture(scope='module')
def venv_python(tmp_path_factory):
  """The Python of a fresh virtual environment with the package's wheel installed."""
  work = tmp_path_factory.mktemp('package')
  source = work / 'source'
  for name in PACKAGE_FILES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, source / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      source.mkdir(exist_ok=True)
      shutil.copy(path, source / name)
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
  _run(
    [*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', str(work / 'wheels'), str(source)],
    cwd=work,
  )
  (wheel,) = (work / 'wheels').glob('gmm_vit_jax-*.whl')
  venv = work / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], cwd=work)
  python = str(venv / 'bin' / 'python')
  venv_site = _run(
    [python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'], cwd=work
  ).stdout.strip()
  with open(os.path.join(venv_site, 'dependencies.pth'), 'w') as f:
    f.write('\n'.join(site.getsitepackages()) + '\n')
  _run([*pip, '--python', python, 'install', '--no-deps', '--no-index', str(wheel)], cwd=work)
  return python


def test_wheel_holds_the_package_alone(venv_python):
  files = _run(
    [
      venv_python,
      '-c',
      'import importlib.metadata as m; print("\\n".join(str(f) for f in m.files("gmm-vit-jax")))',
    ],
    cwd='/',
  ).stdout
  tops = {line.split('/')[0] for line in files.split()}
  assert 'gmm_vit_jax' in tops and not tops & {'configs', 'tests', 'train.py'}, tops
  assert 'gmm_vit_jax/jax_private.py' in files.split()


def test_commands_and_own_model_run_from_another_directory(venv_python, tmp_path):
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  where = _run(
    [venv_python, '-c', 'import gmm_vit_jax; print(gmm_vit_jax.__file__)'], cwd=elsewhere
  ).stdout.strip()
  assert where.startswith(os.path.dirname(os.path.dirname(venv_python))), where
  # absl's --help exits 1 after printing the usage.
  usage = _run(
    [venv_python, '-m', 'gmm_vit_jax.predict', '--help'], cwd=elsewhere, codes=(0, 1)
  ).stdout
  assert 'python -m gmm_vit_jax.predict --export=DIR' in usage and '--invert' in usage, usage
  (elsewhere / 'own_model.py').write_text(docs_example())
  out = _run([venv_python, 'own_model.py'], cwd=elsewhere, **QUICK_COMPILES_ENV).stdout
  assert 'mixing weights of block 1: (4, 2)' in out, out


def test_trains_a_config_file_by_path_from_another_directory(venv_python, tmp_path):
  """configs/quickstart_hvit.py imports its sibling quickstart.py as `configs.quickstart`,
  which resolves from outside the repository; the run is a few steps of a tiny model."""
  workdir = tmp_path / 'run'
  _run(
    [
      venv_python,
      '-m',
      'gmm_vit_jax.train',
      f'--config={ROOT}/configs/quickstart_hvit.py',
      f'--workdir={workdir}',
      '--config.epochs=1',
      '--config.batch_size=360',
      '--config.model.depth=1',
      '--config.model.dim=16',
      '--config.model.head_dim=8',
      '--config.schedule.warmup_epochs=0',
      '--config.eval_every_epochs=1',
      '--config.patch_selection.kind=none',
    ],
    cwd=tmp_path,
    **QUICK_COMPILES_ENV,
  )
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['completed'] and summary['step'] == 3, summary
