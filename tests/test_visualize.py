"""The GMM mask pictures: values against NumPy, one heatmap per layer and head."""

import matplotlib

matplotlib.use('Agg')

import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax.models import build_model
from gmm_vit_jax.visualize import gmm_centre_masks, plot_gmm_masks
from tests.model_testing import tiny_vit_config


def tiny_model(mask_kind='gmm', depth=3):
  config = tiny_vit_config(mask_kind, depth=depth)
  return build_model(config.model, num_classes=10, image_size=32, channels=3,
                     rngs=nnx.Rngs(0))


def numpy_centre_mask(sigma, alpha, rows, cols):
  """sum_k alpha[k, h] exp(-d2 / (2 (sigma[k, h]^2 + 1e-5))) from the centre token,
  zero where d2 >= 104; (H, rows, cols)."""
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing='ij')
  d2 = ((r - rows // 2) ** 2 + (c - cols // 2) ** 2).astype(np.float64)
  out = np.zeros((sigma.shape[1], rows, cols))
  for k in range(sigma.shape[0]):
    for h in range(sigma.shape[1]):
      out[h] += alpha[k, h] * np.exp(-d2 / (2 * (sigma[k, h] ** 2 + 1e-5)))
  return np.where(d2 < 104, out, 0.0)


@pytest.mark.parametrize('grid_shape', [None, (16, 14)])
def test_centre_masks_match_numpy(grid_shape):
  model = tiny_model()
  masks = gmm_centre_masks(model, grid_shape)
  rows, cols = grid_shape or (8, 8)
  assert [name for name, _ in masks] == [f'blocks.{i}.attention' for i in range(3)]
  for block, (_, values) in zip(model.blocks, masks):
    mask = block.attention.mask
    expected = numpy_centre_mask(np.asarray(mask.sigma[...], np.float64),
                                 np.asarray(mask.alpha[...], np.float64), rows, cols)
    assert values.shape == (4, rows, cols)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
  if grid_shape:  # The 16-row grid reaches d2 >= 104 from its centre: the cut-off shows.
    assert np.all(masks[0][1][:, 0, 0] == 0.0)


def test_plot_has_one_heatmap_per_layer_and_head():
  model = tiny_model()
  fig = plot_gmm_masks(model)
  images = [ax for ax in fig.axes if ax.images]
  assert len(images) == 3 * 4
  masks = gmm_centre_masks(model)
  for i, ax in enumerate(images):
    layer, head = divmod(i, 4)
    np.testing.assert_array_equal(ax.images[0].get_array(), masks[layer][1][head])
    low, high = ax.images[0].get_clim()
    assert low == -high == -np.abs(masks[layer][1]).max()
  assert images[0].get_ylabel() == 'blocks.0.attention'
  assert images[3].get_title() == 'head 3'
  fig.canvas.draw()


@pytest.mark.parametrize('kind', ['none', 'elm'])
def test_models_without_gmm_say_so(kind):
  with pytest.raises(ValueError, match="model.mask.kind='gmm'"):
    gmm_centre_masks(tiny_model(kind, depth=1))
