"""Test markers."""


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'multiprocess: starts several training processes joined by jax.distributed')
