"""Config files by path: the folder their sibling imports resolve from."""

import sys

from gmm_vit_jax import config_files


def test_flag_value_takes_both_spellings_and_the_last():
  assert config_files.flag_value(['x', '--config=a.py:cifar100'], 'config') == 'a.py:cifar100'
  assert config_files.flag_value(['x', '--config', 'a.py', '--config=b.py'], 'config') == 'b.py'
  assert config_files.flag_value(['x', '--config_other=a.py'], 'config') is None


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
  config_files.make_importable(f'{package / "wide.py"}:argument')
  config_files.make_importable(str(tmp_path / 'loose.py'))
  assert sys.path[-1] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1
  try:
    from mine.experiments import base
    assert base.WIDTH == 7
  finally:
    for name in ('mine', 'mine.experiments', 'mine.experiments.base'):
      sys.modules.pop(name, None)
