"""The dense layer and the LayerNorm every backbone and attention module uses."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax import cpu_forms, platforms


class Linear(nnx.Linear):
  """nnx.Linear over the last axis; on XLA:CPU one (rows, in) x (in, out) product.

  inputs: (..., in) -> (..., out); the parameters, initialisers and checkpoints are
  nnx.Linear's. On XLA:CPU the leading axes are flattened into rows and the product and
  the bias are cpu_forms.py's: its backward products take transposes written out
  rather than strided operands, and the bias gradient is a product with a ones vector.
  nnx.Linear contracts the (B, N, in) array directly, and autodiff then forms the
  kernel gradient by contracting two axes at once, which XLA:CPU runs by copying the
  activations transposed anyway and then multiplying with strided operands. GPU and
  TPU compilers choose their own layouts and were never measured with these forms, so
  they get nnx.Linear's (platforms.on_cpu, at trace time; tests/test_cpu_forms.py checks
  that their programs are nnx.Linear's).
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not platforms.on_cpu():
      return super().__call__(inputs)
    *lead, features = inputs.shape
    rows = inputs.reshape(math.prod(lead), features)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    rows, kernel, bias = self.promote_dtype((rows, kernel, bias), dtype=self.dtype)
    y = cpu_forms.dense(rows, kernel, self.precision)
    if bias is not None:
      y = cpu_forms.add_rows(y, bias)
    return y.reshape(*lead, self.out_features)


class LayerNorm(nnx.LayerNorm):
  """nnx.LayerNorm over the last axis, as every backbone uses it.

  On XLA:CPU it is computed with cpu_forms.py's means and gradients, the parameters
  and checkpoints being nnx.LayerNorm's; elsewhere it is nnx.LayerNorm.
  """

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if not platforms.on_cpu() or mask is not None or self.scale is None or self.bias is None:
      return super().__call__(x, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    normal = cpu_forms.normalize_last(x.astype(stats_dtype), self.epsilon).astype(x.dtype)
    return cpu_forms.scale_shift_rows(normal, scale, bias)
