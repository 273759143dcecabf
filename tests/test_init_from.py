"""Fine-tuning from a trained model: what loads, what is resized (against NumPy), what is
re-initialised, and a fine-tuned epoch beating the same epoch from scratch."""

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from configs import common, swin_cifar10, tiny
from gmm_vit_jax import errors, export
from gmm_vit_jax.data import sources
from gmm_vit_jax.models import build_from_config, build_model
from gmm_vit_jax.training import init_from, loop
from gmm_vit_jax.training.checkpoint import restore_model
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')


def keys_cubic(t: np.ndarray) -> np.ndarray:
  """The Keys cubic kernel, a = -0.5."""
  t = np.abs(t)
  return np.where(
    t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0)
  )


def bicubic_matrix(old: int, new: int) -> np.ndarray:
  """(new, old) weights of a half-pixel-centred bicubic upsampling, renormalised at the edges."""
  x = (np.arange(new) + 0.5) * old / new - 0.5
  w = keys_cubic(x[:, None] - np.arange(old)[None, :])
  return w / w.sum(1, keepdims=True)


def flat_model(num_classes: int, patch_size: int, mask: str = 'elm', pool: str = 'cls'):
  config = tiny_config()
  config.model.update(dict(patch_size=patch_size, pool=pool, mask=common.mask(mask)))
  model = build_model(
    config.model,
    num_classes=num_classes,
    image_size=8,
    channels=1,
    rngs=nnx.Rngs(patch_size + num_classes),
  )
  return {k: v for k, v in export.flat_variables(model).items()}


def test_adapt_loads_resizes_and_reinitialises():
  source = flat_model(num_classes=5, patch_size=2)  # A 4x4 token grid.
  target = flat_model(num_classes=10, patch_size=1)  # An 8x8 token grid.
  values, table = init_from.adapt(source, target)
  action = {name: act for name, act, _ in table}
  assert values.keys() == target.keys()
  np.testing.assert_array_equal(values['head.kernel'], target['head.kernel'])
  assert action['head.kernel'] == action['head.bias'] == init_from.REINITIALISED
  # The patch projection sees 1x1 patches instead of 2x2: another shape, re-initialised.
  assert action['patch_embed.kernel'] == init_from.REINITIALISED
  loaded = [n for n, a in action.items() if a == init_from.LOADED]
  assert 'blocks.0.attention.query.kernel' in loaded and 'cls_token' in loaded
  for name in loaded:
    np.testing.assert_array_equal(values[name], source[name])

  m = bicubic_matrix(4, 8)
  pos = source['pos_embed']  # (1 + 16, C): the CLS row, then the grid.
  grid = pos[1:].reshape(4, 4, -1)
  expected = np.einsum('ia,jb,abc->ijc', m, m, grid).reshape(64, -1)
  assert action['pos_embed'] == init_from.RESIZED
  np.testing.assert_array_equal(values['pos_embed'][0], pos[0])
  np.testing.assert_allclose(values['pos_embed'][1:], expected, rtol=1e-4, atol=1e-5)

  mask = [n for n in target if n.endswith('mask.weight')][0]
  source_mask = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
  values, table = init_from.adapt({**source, mask: source_mask}, target)
  expected = np.einsum(
    'ia,jb,kc,ld,abcd->ijkl', m, m, m, m, source_mask.reshape(4, 4, 4, 4)
  ).reshape(64, 64)
  np.testing.assert_allclose(values[mask], expected, rtol=1e-4, atol=1e-5)
  text = init_from.format_table(table, [])
  assert 'resized' in text and 're-initialised' in text and 'pos_embed' in text


def test_gmm_mask_parameters_load_across_grids():
  source = flat_model(num_classes=10, patch_size=2, mask='gmm', pool='mean')
  target = flat_model(num_classes=10, patch_size=1, mask='gmm', pool='mean')
  values, table = init_from.adapt(source, target)
  action = {name: act for name, act, _ in table}
  sigma = [n for n in target if n.endswith('mask.sigma')][0]
  assert action[sigma] == init_from.LOADED
  np.testing.assert_array_equal(values[sigma], source[sigma])
  assert action['pos_embed'] == init_from.RESIZED


def test_unknown_source_is_a_clear_error(tmp_path):
  config = tiny_config()
  config.init_from = str(tmp_path)
  with pytest.raises(ValueError, match='init_from='):
    init_from.read_source(config.init_from, config)


LOAD_SPLIT = sources.load_split


def half_loader(half: int):
  """load_split whose train split is one half of its rows (alternate rows); test unchanged."""

  def load_split(name, split, **kwargs):
    images, labels = LOAD_SPLIT(name, split, **kwargs)
    return (images[half::2], labels[half::2]) if split == 'train' else (images, labels)

  return load_split


def test_fine_tuning_beats_the_same_epoch_from_scratch(tmp_path, monkeypatch, caplog):
  """Trained on one half of the training split, fine-tuned for an epoch on the other."""
  caplog.set_level('INFO')
  monkeypatch.setattr(sources, 'load_split', half_loader(0))
  loop.train_and_evaluate(tiny_config(epochs=3), str(tmp_path / 'pretrain'))
  model, config = restore_model(str(tmp_path / 'pretrain'), 'best')
  export.save_bundle(model, config, str(tmp_path / 'bundle'), platforms=('cpu',))

  from_workdir = init_from.read_source(str(tmp_path / 'pretrain'), config)
  from_bundle = init_from.read_source(str(tmp_path / 'bundle'), config)
  assert from_workdir.keys() == from_bundle.keys()
  for name, value in from_workdir.items():
    np.testing.assert_array_equal(from_bundle[name], value)

  monkeypatch.setattr(sources, 'load_split', half_loader(1))
  results = {}
  for name, source in (('scratch', None), ('fine_tuned', str(tmp_path / 'pretrain'))):
    config = tiny_config(epochs=1)
    config.init_from = source
    results[name] = loop.train_and_evaluate(config, str(tmp_path / name))
  table = (tmp_path / 'fine_tuned' / init_from.TABLE_FILE).read_text()
  assert 'blocks.0.attention.query.kernel' in table and '0 re-initialised' in table
  counts = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Initialised')]
  assert len(counts) == 1 and '0 re-initialised, 0 source variables unused' in counts[0]
  assert 'query.kernel' not in counts[0]  # The table is in the file, not on the console.
  assert results['fine_tuned']['eval_loss'] < results['scratch']['eval_loss']
  assert results['fine_tuned']['eval_accuracy'] > results['scratch']['eval_accuracy']


def test_dont_load_keeps_matching_parameters_fresh():
  source = flat_model(num_classes=10, patch_size=2)
  target = flat_model(num_classes=10, patch_size=1)
  values, table = init_from.adapt(source, target, dont_load=(r'head\..*', 'cls_token'))
  action = {name: act for name, act, _ in table}
  for name in ('head.kernel', 'head.bias', 'cls_token'):
    assert action[name] == init_from.REINITIALISED
    np.testing.assert_array_equal(values[name], target[name])
  assert action['blocks.0.attention.query.kernel'] == init_from.LOADED


def test_a_reference_state_dict_reads_back_as_the_model_it_came_from(tmp_path):
  from gmm_vit_jax import convert

  config = tiny_config()
  model = build_model(config.model, num_classes=10, image_size=8, channels=1, rngs=nnx.Rngs(4))
  variables = export.flat_variables(model)
  path = str(tmp_path / 'reference.pth')
  convert.write_torch_state_dict(convert.torch_from_variables(variables, config), path)
  read = init_from.read_source(path, config)
  assert read.keys() == variables.keys()
  for name, value in variables.items():
    np.testing.assert_allclose(read[name], value, rtol=1e-6)


def weights_folder(path, config) -> str:
  """A bundle's weights and config (all that init_from reads of it) of an untrained model."""
  path.mkdir()
  save_file(export.flat_variables(build_from_config(config)), str(path / export.PARAMS_FILE))
  (path / export.CONFIG_FILE).write_text(config.to_json())
  return str(path)


def no_data(*args, **kwargs):
  raise AssertionError('the data loaded before init_from was checked')


def test_a_missing_source_is_refused_before_the_data_loads(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, 'make_pipeline', no_data)
  config = tiny_config()
  config.init_from = str(tmp_path / 'no_such_run')
  with pytest.raises(errors.ConfigError, match='no_such_run.* does not exist: give a run'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_damaged_source_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, 'make_pipeline', no_data)
  config = tiny_config()
  config.init_from = weights_folder(tmp_path / 'bundle', config)
  (tmp_path / 'bundle' / export.PARAMS_FILE).write_bytes(b'\x00' * 40)
  with pytest.raises(errors.ConfigError, match='bundle.* cannot be read') as error:
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert '\n' not in str(error.value)


def test_another_backbone_is_refused_unless_partial(tmp_path, monkeypatch):
  swin = tiny.shrink(swin_cifar10.get_config('digits'))
  config = tiny_config()
  config.init_from = weights_folder(tmp_path / 'swin', swin)
  monkeypatch.setattr(loop, 'make_pipeline', no_data)
  with pytest.raises(
    errors.ConfigError,
    match="holds a 'swin' model and would fill [0-9]+% .*"
    r're-initialised.*init_from_partial=True',
  ):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  config.init_from_partial = True
  init_from.check(config)


def test_a_new_head_and_grid_fill_enough(tmp_path):
  """Fine-tuning on another class count and patch size: the head and the patch projection
  are new, the rest loads or resizes."""
  source = tiny_config()
  source.dataset.name = 'cifar10'  # 10 classes of 32x32x3 images: 64 tokens of patch 4.
  source.model.patch_size = 4
  config = tiny_config()  # Digits: 8x8x1 images, 16 tokens of patch 2.
  config.init_from = weights_folder(tmp_path / 'cifar', source)
  init_from.check(config)


def test_filled_share_counts_values_and_leaves_dont_load_out():
  source = flat_model(num_classes=5, patch_size=2)
  target = flat_model(num_classes=10, patch_size=2)  # Only the head differs.
  total = sum(value.size for value in target.values())
  head = target['head.kernel'].size + target['head.bias'].size
  _, table = init_from.adapt(source, target)
  assert init_from.filled_share(table, target) == pytest.approx(1 - head / total)
  _, table = init_from.adapt(source, target, dont_load=(r'head\..*',))
  assert init_from.filled_share(table, target) == 1.0
