"""Top-5 classes of image files under an inference bundle.

    python -m gmm_vit_jax.predict --export=DIR image.png [more.png ...]

Each image goes through the preprocessing that image folders get in training
(gmm_vit_jax/data/images.py): 16-bit and float images scaled by their range,
transparency composited over white, converted to the bundle's channels (grey <-> RGB),
the centre square resized to its image size by area averaging; then the bundle's own
normalisation. A file of several frames is refused. The images must look like the
training data: the digits models learned light strokes on a dark background, as in
scikit-learn's digits, so a scan of dark ink on white paper needs --invert; predict says
so when an image's background is the opposite of the training images' (preprocess.json's
background).

A file that cannot be read is reported on its own line and the others are still
answered; the exit code is then 1.
"""

import sys

import numpy as np
from absl import app, flags

from gmm_vit_jax import cli, console, errors, export
from gmm_vit_jax.data import images

TOP_K = 5


def read_image(path: str, image_size: int, channels: int, invert: bool = False) -> np.ndarray:
  """An image file as uint8 (image_size, image_size, channels); `invert` maps v to 255 - v."""
  pixels = images.read_image(path, image_size, channels)
  return 255 - pixels if invert else pixels


def background_hint(pixels: np.ndarray, trained_on: str | None, inverted: bool) -> str | None:
  """What to try when uint8 (H, W, C) `pixels` have a background ('dark' or 'light' by
  their outermost ring) opposite to `trained_on`, the training images' background."""
  if trained_on not in ('dark', 'light'):
    return None
  seen = 'light' if images.border_brightness(pixels) > 0.5 else 'dark'
  if seen == trained_on:
    return None
  fix = 'try it without --invert' if inverted else 'try --invert'
  return f'its background is {seen}, but the model learned {trained_on} backgrounds: {fix}'


def top_classes(
  logits: np.ndarray, class_names: list[str], k: int = TOP_K
) -> list[tuple[str, int, float]]:
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
  recipe = bundle.preprocess.get('preprocessing', images.PREPROCESSING)
  if recipe != images.PREPROCESSING:
    raise errors.UserError(
      f'{flags.FLAGS.export} asks for the preprocessing {recipe!r}, which '
      f'this version does not know ({images.PREPROCESSING!r}); predict '
      'with the version that wrote the bundle.'
    )
  size, _, channels = bundle.image_shape
  inputs, readable, failed = [], [], 0
  for path in paths:
    try:
      inputs.append(read_image(path, size, channels, flags.FLAGS.invert))
      readable.append(path)
    except images.ImageError as e:
      print(f'{e.path}: cannot read: {e.why}', file=sys.stderr)
      failed += 1
  logits = bundle.predict(np.stack(inputs)) if inputs else []
  for path, pixels, row in zip(readable, inputs, logits):
    print(path)
    for rank, (name, index, prob) in enumerate(top_classes(row, bundle.class_names), 1):
      print(f'  {rank}. {name} ({index})  {prob:.4f}')
    hint = background_hint(pixels, bundle.preprocess.get('background'), flags.FLAGS.invert)
    if hint:
      print(f'{path}: {hint}.', file=sys.stderr)
  if failed:
    print(f'{failed} of {len(paths)} files could not be read.', file=sys.stderr)
  return errors.EXIT_ERROR if failed else errors.EXIT_OK


if __name__ == '__main__':
  flags.DEFINE_string(
    'export',
    None,
    'Inference bundle directory (a local folder or a storage URL such as gs://BUCKET/bundle).',
    required=True,
  )
  flags.DEFINE_bool(
    'invert',
    False,
    'Use 255 - pixel: for dark strokes on a light background '
    'when the model learned light on dark (the digits models).',
  )
  cli.run_app(main)
