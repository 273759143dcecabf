"""Top-5 classes of image files under an inference bundle.

    python -m gmm_vit_jax.predict --export=DIR image.png [more.png ...]

Each image is converted to the bundle's channels (grey <-> RGB) and resized to its
image size (bilinear) before the bundle's own normalisation.
"""

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from gmm_vit_jax import console, export

TOP_K = 5


def read_image(path: str, image_size: int, channels: int) -> np.ndarray:
  """An image file as uint8 (image_size, image_size, channels)."""
  with Image.open(path) as image:
    image = image.convert('L' if channels == 1 else 'RGB')
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(image_size, image_size, channels)


def top_classes(logits: np.ndarray, class_names: list[str],
                k: int = TOP_K) -> list[tuple[str, int, float]]:
  """(num_classes,) logits -> the k most probable (name, index, probability), best first."""
  z = logits - logits.max()
  probs = np.exp(z) / np.exp(z).sum()
  order = np.argsort(-probs)[:k]
  return [(class_names[i], int(i), float(probs[i])) for i in order]


def main(argv):
  console.quiet_jax()
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files.')
  bundle = export.load(flags.FLAGS.export)
  size, _, channels = bundle.image_shape
  logits = bundle.predict(np.stack([read_image(p, size, channels) for p in paths]))
  for path, row in zip(paths, logits):
    print(path)
    for rank, (name, index, prob) in enumerate(top_classes(row, bundle.class_names), 1):
      print(f'  {rank}. {name} ({index})  {prob:.4f}')


if __name__ == '__main__':
  flags.DEFINE_string('export', None, 'Inference bundle directory.', required=True)
  app.run(main)
