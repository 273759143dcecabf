"""The GMM mask pictures: values against NumPy, one heatmap per layer and head."""

import matplotlib

matplotlib.use('Agg')

import numpy as np
import pytest
from flax import nnx

from configs import pit_cifar10
from gmm_vit_jax.models import build_model
from gmm_vit_jax.visualize import gmm_centre_masks, plot_gmm_masks, row_label
from tests.model_testing import tiny_swin_config, tiny_vit_config


def tiny_vit(mask_kind='gmm', depth=3, patch_size=4):
  config = tiny_vit_config(mask_kind, depth=depth)
  config.model.patch_size = patch_size
  return build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))


def numpy_centre_mask(sigma, alpha, rows, cols, cutoff=True):
  """sum_k alpha[k, h] exp(-d2 / (2 (sigma[k, h]^2 + 1e-5))) from the centre token,
  zero where d2 >= 104 with the cut-off; (H, rows, cols)."""
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
  d2 = ((r - rows // 2) ** 2 + (c - cols // 2) ** 2).astype(np.float64)
  out = np.zeros((sigma.shape[1], rows, cols))
  for k in range(sigma.shape[0]):
    for h in range(sigma.shape[1]):
      out[h] += alpha[k, h] * np.exp(-d2 / (2 * (sigma[k, h] ** 2 + 1e-5)))
  return np.where(d2 < 104, out, 0.0) if cutoff else out


def expected_masks(attentions, rows, cols):
  return [
    numpy_centre_mask(
      np.asarray(a.mask.sigma[...], np.float64),
      np.asarray(a.mask.alpha[...], np.float64),
      rows,
      cols,
    )
    for a in attentions
  ]


@pytest.mark.parametrize('patch_size,side', [(4, 8), (2, 16)])
def test_centre_masks_match_numpy(patch_size, side):
  model = tiny_vit(patch_size=patch_size)
  masks = gmm_centre_masks(model)
  assert [name for name, _ in masks] == [f'blocks.{i}.attention' for i in range(3)]
  expected = expected_masks([block.attention for block in model.blocks], side, side)
  for (_, values), want in zip(masks, expected):
    assert values.shape == (4, side, side)
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)
  if side == 16:  # The corner is at d2 = 128 from the centre: the cut-off shows.
    mask = model.blocks[0].attention.mask
    uncut = numpy_centre_mask(
      np.asarray(mask.sigma[...], np.float64),
      np.asarray(mask.alpha[...], np.float64),
      side,
      side,
      cutoff=False,
    )
    assert np.all(masks[0][1][:, 0, 0] == 0.0) and np.all(np.abs(uncut[:, 0, 0]) > 1e-3)


def test_each_layer_uses_its_own_grid():
  """PiT: a 4x4 token grid in its first stage, 2x2 after the pooling."""
  config = pit_cifar10.model('gmm', 'cifar10')
  config.update(dim=8, depths=(1, 1), num_heads=(2, 2), head_dim=4, stochastic_depth=0.0)
  model = build_model(config, num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))
  masks = gmm_centre_masks(model)
  assert [values.shape for _, values in masks] == [(2, 4, 4), (2, 2, 2)]
  attentions = [
    node
    for path, node in nnx.iter_graph(model)
    if '.'.join(map(str, path)) in [name for name, _ in masks]
  ]
  for (_, values), attention in zip(masks, attentions):
    (want,) = expected_masks([attention], *values.shape[1:])
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)


def test_plot_has_one_heatmap_per_layer_and_head_on_one_scale():
  model = tiny_vit()
  fig = plot_gmm_masks(model)
  images = [ax for ax in fig.axes if ax.images]
  assert len(images) == 3 * 4
  masks = gmm_centre_masks(model)
  limit = max(np.abs(values).max() for _, values in masks)
  for i, ax in enumerate(images):
    layer, head = divmod(i, 4)
    np.testing.assert_array_equal(ax.images[0].get_array(), masks[layer][1][head])
    assert ax.images[0].get_clim() == (-limit, limit)
    assert ax.get_title() == f'head {head}'
  assert [text.get_text() for ax in fig.axes for text in ax.texts] == [
    f'blocks.{i}\n8x8 grid' for i in range(3)
  ]
  colorbar = fig.axes[-1]
  assert not colorbar.images and 'one scale for every panel' in colorbar.get_ylabel()
  fig.canvas.draw()


def test_layers_with_fewer_heads_get_no_empty_panels():
  config = tiny_swin_config('gmm')  # Two layers of 2 heads, then two of 4.
  model = build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  fig = plot_gmm_masks(model)
  assert [v.shape for _, v in gmm_centre_masks(model)] == [(2, 4, 4)] * 2 + [(4, 4, 4)] * 2
  panels = [ax for ax in fig.axes if ax.images]
  labels = [ax for ax in fig.axes if ax.texts]
  assert len(panels) == 2 * 2 + 2 * 4 and len(labels) == 4
  assert len(fig.axes) == len(panels) + len(labels) + 1  # + the colour bar.


def test_row_labels_are_whole_and_apart():
  """PiT's long layer names once ran vertically into each other and off the figure."""
  config = pit_cifar10.model('gmm', 'cifar10')
  config.update(dim=8, depths=(2, 1), num_heads=(2, 4), head_dim=4, stochastic_depth=0.0)
  model = build_model(config, num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))
  fig = plot_gmm_masks(model)
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  labels = [text for ax in fig.axes for text in ax.texts]
  masks = gmm_centre_masks(model)
  assert [label.get_text() for label in labels] == [row_label(n, v) for n, v in masks]
  assert [label.get_text().split('\n')[1] for label in labels] == ['4x4 grid'] * 2 + ['2x2 grid']
  boxes = [label.get_window_extent(renderer) for label in labels]
  _, height = fig.canvas.get_width_height()
  panels_from = min(ax.get_window_extent(renderer).x0 for ax in fig.axes if ax.images)
  for box in boxes:
    assert 0 <= box.x0 and box.x1 <= panels_from and 0 <= box.y0 and box.y1 <= height
  for upper, lower in zip(boxes, boxes[1:]):
    assert lower.y1 < upper.y0


@pytest.mark.parametrize('kind', ['none', 'elm'])
def test_models_without_gmm_say_so(kind):
  with pytest.raises(ValueError, match="model.mask.kind='gmm'"):
    gmm_centre_masks(tiny_vit(kind, depth=1))
