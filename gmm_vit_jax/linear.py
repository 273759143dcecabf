"""The dense layer every backbone and attention module uses."""

import math

import jax
from flax import nnx

from gmm_vit_jax import platforms


class Linear(nnx.Linear):
  """nnx.Linear over the last axis, computed as one (rows, in) x (in, out) product.

  inputs: (..., in) -> (..., out); the parameters, initialisers and checkpoints are
  nnx.Linear's. Why the leading axes are flattened first: nnx.Linear contracts a
  (B, N, in) array directly, and autodiff then forms the kernel gradient by contracting
  two axes, B and N, at once. XLA:CPU lays that product out by copying the (B * N, in)
  activations and gradients transposed before each weight-gradient product; over one
  (rows, in) matrix it uses them in place. GMM-ViT trains 1.16x faster for it on a
  2-core CPU (benchmarks/ops.py times an MLP both ways). Only on XLA:CPU: GPU and TPU
  compilers choose their own layouts for the contraction and were never measured with
  the flattened form, so they get nnx.Linear's (platforms.on_cpu, at trace time).
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not platforms.on_cpu():
      return super().__call__(inputs)
    *lead, features = inputs.shape
    rows = inputs.reshape(math.prod(lead), features)
    return super().__call__(rows).reshape(*lead, self.out_features)
