"""Top-5 classes of image files under an inference bundle.

    python -m gmm_vit_jax.predict --export=DIR image.png [more.png ...]

Each image is converted to the bundle's channels (grey <-> RGB) and resized to its
image size (bilinear) before the bundle's own normalisation. The images must look like
the training data: the digits models learned light strokes on a dark background, as in
scikit-learn's digits, so a scan of dark ink on white paper needs --invert.

A file that cannot be read is reported on its own line and the others are still
answered; the exit code is then 1.
"""

import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from gmm_vit_jax import cli, console, errors, export

TOP_K = 5


def read_image(path: str, image_size: int, channels: int, invert: bool = False) -> np.ndarray:
  """An image file as uint8 (image_size, image_size, channels); `invert` maps v to 255 - v."""
  with Image.open(path) as image:
    image = image.convert('L' if channels == 1 else 'RGB')
    image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, np.uint8).reshape(image_size, image_size, channels)
  return 255 - pixels if invert else pixels


def _why_unreadable(e: Exception) -> str:
  if isinstance(e, FileNotFoundError):
    return 'no such file'
  if isinstance(e, IsADirectoryError):
    return 'a directory, not an image'
  if isinstance(e, Image.DecompressionBombError):
    return f'too many pixels to decode safely ({e})'
  if isinstance(e, Image.UnidentifiedImageError):
    return 'not an image file PIL can read'
  return f'{type(e).__name__}: {e}'


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
  images, readable, failed = [], [], 0
  for path in paths:
    try:
      images.append(read_image(path, size, channels, flags.FLAGS.invert))
      readable.append(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      print(f'{path}: cannot read: {_why_unreadable(e)}', file=sys.stderr)
      failed += 1
  logits = bundle.predict(np.stack(images)) if images else []
  for path, row in zip(readable, logits):
    print(path)
    for rank, (name, index, prob) in enumerate(top_classes(row, bundle.class_names), 1):
      print(f'  {rank}. {name} ({index})  {prob:.4f}')
  if failed:
    print(f'{failed} of {len(paths)} files could not be read.', file=sys.stderr)
  return errors.EXIT_ERROR if failed else errors.EXIT_OK


if __name__ == '__main__':
  flags.DEFINE_string('export', None, 'Inference bundle directory (a local folder or a '
                      'storage URL such as gs://BUCKET/bundle).', required=True)
  flags.DEFINE_bool('invert', False, 'Use 255 - pixel: for dark strokes on a light background '
                    'when the model learned light on dark (the digits models).')
  app.run(lambda argv: cli.run(main, argv))
