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
    raise ValueError(
      f"{type(model).__name__} has no Gaussian mixture mask (model.mask.kind='gmm')."
    )
  return masks


LABEL_CHAR_IN = 0.075  # Inches per character of a row label at its 8-point size, roomy.


def row_label(name: str, values: np.ndarray) -> str:
  """A layer's row label: its module path up to the attention module, and its grid."""
  rows, cols = values.shape[1:]
  return f'{name.partition(".attention")[0] or name}\n{rows}x{cols} grid'


def plot_gmm_masks(model: nnx.Module, panel_size: float = 1.3):
  """A matplotlib Figure: one row per GMM layer holding one heatmap per head of that layer
  (a row of fewer heads is shorter, not padded with empty panels), the centre query marked
  with a dot, the layer's name and grid in a column of its own on the left. Every panel
  shares one colour scale, symmetric about zero, so colours compare across layers."""
  masks = gmm_centre_masks(model)
  heads = max(values.shape[0] for _, values in masks)
  limit = max(float(np.abs(values).max()) for _, values in masks) or 1.0
  labels = [row_label(name, values) for name, values in masks]
  label_width = LABEL_CHAR_IN * max(len(line) for label in labels for line in label.split('\n'))
  fig = plt.figure(
    layout='constrained',
    figsize=(label_width + panel_size * heads + 1.6, (panel_size + 0.25) * len(masks) + 0.4),
  )
  layout = fig.add_gridspec(
    len(masks), heads + 1, width_ratios=[label_width] + [panel_size] * heads
  )
  panels = []
  for layer, ((_, values), label) in enumerate(zip(masks, labels)):
    text = fig.add_subplot(layout[layer, 0])
    text.set_axis_off()
    text.text(1.0, 0.5, label, ha='right', va='center', fontsize=8, transform=text.transAxes)
    rows, cols = values.shape[1:]
    for head in range(values.shape[0]):
      ax = fig.add_subplot(layout[layer, head + 1])
      image = ax.imshow(values[head], cmap='RdBu_r', vmin=-limit, vmax=limit)
      ax.plot(cols // 2, rows // 2, 'k.', markersize=3)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f'head {head}', fontsize=7, pad=2)
      panels.append(ax)
  fig.colorbar(
    image,
    ax=panels,
    shrink=min(1.0, 3.0 / len(masks) + 0.2),
    label='mask value\n(one scale for every panel)',
  )
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
