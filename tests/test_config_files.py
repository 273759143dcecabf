"""Config files by path: the folder their sibling imports resolve from."""

import sys

from gmm_vit_jax import config_files


def test_a_package_folder_becomes_importable_from_its_root(tmp_path, monkeypatch):
  package = tmp_path / 'mine' / 'experiments'
  package.mkdir(parents=True)
  (tmp_path / 'mine' / '__init__.py').write_text('')
  (package / '__init__.py').write_text('')
  (package / 'base.py').write_text('WIDTH = 7\n')
  (package / 'wide.py').write_text('from mine.experiments import base\n')
  (tmp_path / 'loose.py').write_text('')
  assert config_files.package_root(str(package / 'wide.py')) == str(tmp_path)
  assert config_files.package_root(str(tmp_path / 'loose.py')) is None
  monkeypatch.setattr(sys, 'path', list(sys.path))
  config_files.make_importable(str(package / 'wide.py'))
  config_files.make_importable(str(tmp_path / 'loose.py'))
  assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1
  try:
    from mine.experiments import base

    assert base.WIDTH == 7
    (package / 'config.py').write_text(
      'import ml_collections\nfrom mine.experiments import base\n\n\ndef get_config():\n'
      '  return ml_collections.ConfigDict(dict(width=base.WIDTH))\n'
    )
    assert config_files.load(str(package / 'config.py')).width == 7
  finally:
    for name in ('mine', 'mine.experiments', 'mine.experiments.base'):
      sys.modules.pop(name, None)
