"""The precision of a model's products (matmuls and convolutions), from its compute dtype.

A float32 config means float32 products on every platform. Left to their defaults, XLA
computes float32 products in one bfloat16 pass on a TPU and in TensorFloat32 on recent
NVIDIA GPUs (A100, H100): both round the operands' mantissas to 8 or 10 bits, the
rounding of q.k^T before a GMM mask that the paper configs compute in float32 to avoid
(PyTorch, since 1.12, multiplies float32 in full float32 unless told otherwise). So a
float32 model traces its products at 'highest' precision; a bfloat16 model keeps the
platform's default, which is already its full precision. A CPU computes float32
products in float32 either way. docs/precision.md lists what each platform computes.
"""

import contextlib

import jax

from gmm_vit_jax.models import compute_dtype

# jax.default_matmul_precision's name for full float32 products (lax.Precision.HIGHEST).
FLOAT32_PRODUCTS = 'highest'


def matmul_precision(dtype: str) -> str | None:
  """The products' precision for `model.dtype` ('float32', 'bfloat16' or 'auto', resolved
  for the platform being traced for); None: the platform's default."""
  return FLOAT32_PRODUCTS if compute_dtype(dtype) == 'float32' else None


@contextlib.contextmanager
def products_for(dtype: str):
  """Traces the products inside the context at matmul_precision(`dtype`).

  Enter it inside the function being traced (a jitted step's body), so that the choice
  follows the platform that step is traced for.
  """
  precision = matmul_precision(dtype)
  if precision is None:
    yield
    return
  with jax.default_matmul_precision(precision):
    yield
