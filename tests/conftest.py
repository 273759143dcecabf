"""Test markers, and one compilation cache for the whole test run.

Most tests compile the same tiny models, many of them in fresh `train.py` processes; a
persistent JAX compilation cache shared by every xdist worker and subprocess of one run
compiles each only once. It starts empty and is removed at the end, so each run measures
its own compiles and nothing leaks between runs.
"""

import os
import shutil
import tempfile

import pytest

_CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'


def pytest_configure(config):
  config.addinivalue_line(
    'markers', 'multiprocess: starts several training processes joined by jax.distributed'
  )
  # Only the process that starts the run creates it; xdist workers and subprocesses inherit it.
  if 'PYTEST_XDIST_WORKER' in os.environ or _CACHE_ENV in os.environ:
    return
  config.compilation_cache = tempfile.mkdtemp(prefix='gmm_vit_jax_tests_compilation_cache_')
  os.environ.update(
    {
      _CACHE_ENV: config.compilation_cache,
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '1',
      # A size limit turns on JAX's file lock, so parallel writers and readers never meet
      # a half-written entry.
      'JAX_COMPILATION_CACHE_MAX_SIZE': str(8 << 30),
    }
  )


def pytest_unconfigure(config):
  cache = getattr(config, 'compilation_cache', None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope='module')
def quick_compiles():
  """Most XLA optimisations off for the module that asks (tests/model_testing.py)."""
  from tests import model_testing

  with model_testing.quick_compiles():
    yield
