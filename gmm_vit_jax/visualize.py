"""Pictures of what a model learned: its Gaussian mixture masks as heatmaps over the grid.

Each GMM layer weights the attention logits of a query token by a mixture of Gaussians
of its grid distance to every key. Seen from the centre query, that is a (rows, cols)
map per head; in the default multiply mode a value above 1 sharpens the query-key
score, one near 0 flattens it and a negative one reverses it.
"""

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gmm_vit_jax.attention import grid
from gmm_vit_jax.attention.masks import GaussianMixtureMask


def gmm_centre_masks(model: nnx.Module) -> list[tuple[str, np.ndarray]]:
  """The mask values every GMM layer gives the centre query of its grid, in layer order.

  Each layer uses the token grid it was built for (a ViT's patch grid, a Swin window, a
  PiT stage); the centre is the token at (rows // 2, cols // 2).

  Returns:
    [(layer name, (H, rows, cols) float32)], the name being the module path of the
    layer's attention, e.g. 'blocks.0.attention'.
  """
  masks = []
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, GaussianMixtureMask):
      continue
    name = '.'.join(map(str, path[:-1]))
    if node.grid_shape is None:
      raise ValueError(f'The mask of {name} was built without a grid_shape.')
    rows, cols = node.grid_shape
    values = np.asarray(node.values(jnp.asarray(grid.grid_coords(rows, cols))))
    masks.append((name, values[:, (rows // 2) * cols + cols // 2].reshape(-1, rows, cols)))
  if not masks:
    raise ValueError(f'{type(model).__name__} has no Gaussian mixture mask '
                     "(model.mask.kind='gmm').")
  return masks


def plot_gmm_masks(model: nnx.Module, panel_size: float = 1.3):
  """A matplotlib Figure: one row per GMM layer, one heatmap per head, the centre query
  marked with a dot; each row shares a colour scale symmetric about zero."""
  masks = gmm_centre_masks(model)
  heads = max(values.shape[0] for _, values in masks)
  fig, axes = plt.subplots(len(masks), heads, squeeze=False, constrained_layout=True,
                           figsize=(panel_size * heads + 1.0, panel_size * len(masks)))
  for layer, (row, (name, values)) in enumerate(zip(axes, masks)):
    limit = float(np.abs(values).max()) or 1.0
    rows, cols = values.shape[1:]
    for head, ax in enumerate(row):
      ax.set_xticks([])
      ax.set_yticks([])
      if head >= values.shape[0]:
        ax.set_axis_off()
        continue
      image = ax.imshow(values[head], cmap='RdBu_r', vmin=-limit, vmax=limit)
      ax.plot(cols // 2, rows // 2, 'k.', markersize=3)
      if layer == 0:
        ax.set_title(f'head {head}', fontsize=8)
    row[0].set_ylabel(name, fontsize=8)
    fig.colorbar(image, ax=list(row), shrink=0.8, label='mask value')
  suptitle_fitted(fig, 'Gaussian mixture mask seen from the centre token')
  return fig


TITLE_MARGIN_IN = 0.4  # Inches of white beside a figure's widest title line.


def suptitle_fitted(fig: Figure, title: str, **kwargs) -> None:
  """Sets the figure's title, scaling the figure up whole where the title is wider: a
  model of one or two heads makes a figure narrower than its title, and scaled whole its
  panels grow with it rather than drift apart."""
  text = fig.suptitle(title, **kwargs)
  width_in = text.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / fig.dpi
  scale = (width_in + TITLE_MARGIN_IN) / fig.get_figwidth()
  if scale > 1:
    fig.set_size_inches(fig.get_figwidth() * scale, fig.get_figheight() * scale)
