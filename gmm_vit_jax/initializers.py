"""Weight initialisers shared by the backbones (those of the reference code)."""

from typing import Callable

import jax
from flax import nnx

# Linear and conv weights: xavier-normal, biases zero (the reference's init_weights).
dense_init = nnx.initializers.xavier_normal()
# Position embeddings and CLS tokens: standard normal (torch.randn in the reference).
embedding_init = nnx.initializers.normal(stddev=1.0)
# timm's trunc_normal_(std=.02), used by T2T-ViT and HAT-Net, truncates at +-2 in absolute
# terms, a hundred standard deviations out: in effect a plain normal.
small_normal_init = nnx.initializers.normal(stddev=0.02)


def reinit_kernels(module: nnx.Module, init: Callable, rngs: nnx.Rngs) -> None:
  """Redraws every Linear and Conv kernel under `module` with `init`.

  The backbones whose reference initialises all layers after construction
  (`model.apply(init_fn)` in PyTorch) call this at the end of their constructor,
  so shared layers need no initialiser argument. Biases are zero already.
  """
  layers = [m for _, m in nnx.iter_modules(module) if isinstance(m, (nnx.Linear, nnx.Conv))]
  # One key drawn and fresh Params rather than in-place writes: under nnx.eval_shape each
  # variable write costs a pass over the whole trace so far.
  keys = jax.random.split(rngs.params(), len(layers))
  for key, m in zip(keys, layers):
    m.kernel = nnx.Param(init(key, m.kernel.shape, m.kernel.dtype))
