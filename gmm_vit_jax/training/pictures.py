"""The pictures a run writes: WORKDIR/<name>.png and the same image in TensorBoard.

- augmentation.png (step 0): a few training images above random draws of the recipe.
- kept_patches.png (step 0): which patches the patch heuristic keeps.
- gmm_masks.png (each eval): the learned Gaussian mixture masks, one panel per layer and
  head (gmm_vit_jax.visualize.plot_gmm_masks).

Each is a matplotlib figure with a title, named rows and columns and, where colours
carry meaning, a legend.
"""

import io

import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from gmm_vit_jax import patches, storage
from gmm_vit_jax.augment import augmentation_grid
from gmm_vit_jax.patches.visualize import HATCH_COLOUR
from gmm_vit_jax.visualize import plot_gmm_masks, suptitle_fitted

DPI = 100
MIN_GRID_PX = 360  # Grids of small images (8x8 digits) are drawn at least this tall,
MAX_GRID_WIDTH_IN = 10.0  # unless that would make them wider than this.
MASK_MEANING = {
  'multiply': "each key's attention score is multiplied by the mask value:\n"
  '1 keeps it, 0 flattens it, below 0 reverses it',
  'add': "the mask value is added to each key's attention logit",
}
GRID_PAD = 2  # White pixels between the images of a grid.
KEPT_PATCHES_SCALE = 8  # Nearest upscaling that lets the hatching of dropped patches show.


def rendered(fig: Figure) -> np.ndarray:
  """A figure drawn off-screen -> (H, W, 3) uint8 RGB."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_picture(writer, workdir: str, name: str, rgb: np.ndarray, *, step: int) -> None:
  """A uint8 (H, W, 3) picture to TensorBoard (tag `name`) and to WORKDIR/<name>.png."""
  writer.write_images(step, {name: rgb[None]})
  if jax.process_index() == 0:
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format='PNG')
    storage.write_atomically(storage.join(workdir, f'{name}.png'), png.getvalue())


def _grid_figure(
  grid: np.ndarray, rows: list[str], columns: int, tile: tuple[int, int], *, title: str, xlabel: str
) -> Figure:
  """A tiled image grid (augment.visualize.tile's layout) with its rows named on the left
  and its columns numbered below; sized so that the grid shows at least 2x and at least
  MIN_GRID_PX tall, within MAX_GRID_WIDTH_IN."""
  h, w = tile
  aspect = grid.shape[1] / grid.shape[0]
  grid_in = min(max(2 * grid.shape[0], MIN_GRID_PX) / DPI, MAX_GRID_WIDTH_IN / aspect)
  height_in = grid_in + 1.2
  width_in = max(6.0, grid_in * aspect + 1.8)
  fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout='constrained')
  ax = fig.add_subplot()
  ax.imshow(grid, interpolation='nearest')
  ax.set_yticks([GRID_PAD + i * (h + GRID_PAD) + h / 2 for i in range(len(rows))], rows)
  ax.set_xticks(
    [GRID_PAD + j * (w + GRID_PAD) + w / 2 for j in range(columns)],
    [str(j + 1) for j in range(columns)],
  )
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)
  ax.set_xlabel(xlabel)
  ax.set_title(title, fontsize=10)
  return fig


def augmentation_picture(
  images: np.ndarray,
  key: jax.Array,
  config: ml_collections.ConfigDict,
  info: dict,
  *,
  draws: int = 4,
) -> np.ndarray:
  """(N, H, W, C) uint8 training images -> an RGB picture: the images as stored in the
  top row, each next row one random draw of the `config.augment` recipe on all of them."""
  grid = augmentation_grid(
    images, key, config.augment, mean=info['mean'], std=info['std'], draws=draws, pad=GRID_PAD
  )
  rows = ['original'] + [f'draw {i + 1}' for i in range(draws)]
  fig = _grid_figure(
    grid,
    rows,
    images.shape[0],
    images.shape[1:3],
    title=f'Training augmentation of {config.dataset.name}: each row one random draw of the recipe',
    xlabel='training image',
  )
  return rendered(fig)


def kept_patches_picture(config: ml_collections.ConfigDict, images: np.ndarray) -> np.ndarray:
  """Which patches `config.patch_selection` keeps of a few (N, H, W, C) uint8 training
  images (before augmentation) -> an RGB picture with a legend and the kept fraction."""
  patch_size = config.model.patch_size
  token_index = np.asarray(
    patches.select_tokens(
      images.astype(np.float32) / 255.0,
      jax.random.key(config.seed),
      config.patch_selection,
      patch_size=patch_size,
    )
  )
  n, h, w, _ = images.shape
  total = (h // patch_size) * (w // patch_size)
  grid = patches.draw_kept_patches(
    images,
    token_index,
    patch_size=patch_size,
    max_images=n,
    columns=n,
    scale=KEPT_PATCHES_SCALE,
    border=GRID_PAD,
  )
  kept = token_index.shape[1]
  fig = _grid_figure(
    grid,
    [''],
    n,
    (h * KEPT_PATCHES_SCALE, w * KEPT_PATCHES_SCALE),
    title=(
      f'Patch selection ({config.patch_selection.kind}): {kept} of {total} patches '
      f'kept per image ({kept / total:.0%}) on the steps that select'
    ),
    xlabel='training image',
  )
  fig.legend(
    handles=[
      Patch(facecolor='white', edgecolor='black', label='kept'),
      Patch(
        facecolor='0.3', edgecolor=HATCH_COLOUR / 255, hatch='//', label='dropped (dimmed, hatched)'
      ),
    ],
    loc='outside right center',
    frameon=False,
  )
  return rendered(fig)


def gmm_masks_picture(
  graphdef: nnx.GraphDef, params, buffers, *, step: int, mode: str
) -> np.ndarray:
  """The model's Gaussian mixture masks at training step `step`, one panel per layer and
  head, as an RGB picture; `mode` (model.mask.mode) says what the colours mean."""
  fig = plot_gmm_masks(nnx.merge(graphdef, params, buffers))
  suptitle_fitted(
    fig,
    f'Gaussian mixture masks at step {step}, seen from the centre query '
    f'(dot)\n{MASK_MEANING[mode]}',
    fontsize=10,
  )
  try:
    return rendered(fig)
  finally:
    plt.close(fig)
