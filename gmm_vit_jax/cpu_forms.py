"""XLA:CPU forms of the dense layer's and LayerNorm's products and sums.

Two things XLA:CPU does slowly in a training step, each written out here so that it
does not have to:

- Transposed operands. Autodiff gives a dense layer's input gradient as
  grad @ kernel.T and its kernel gradient as rows.T @ grad, and XLA hands the
  transposes to its matrix-product library as strides, which runs slower on them than
  on the same products with the transposes written out first (GMM-T2T's (B * 64, 512)
  x (512, 256) layer, forward and backward: 1.2x; benchmarks/ops.py). `dense` writes
  both transposes out.
- Long sums. XLA:CPU rewrites every reduction over more than 32 elements into a
  windowed one (reduce-window over blocks of 32, then a reduce) and runs it in its own
  loops; in the GMM-ViT step these were the largest of them. A sum written as a
  product with a ones vector goes to the matrix-product library instead. The bias and
  LayerNorm gradients and LayerNorm's means are such products here (LayerNorm over
  (B, 65, 192), forward and backward: 1.7x; benchmarks/ops.py). Autodiff would turn
  each broadcast of the forward pass into a windowed sum in the backward pass, so the
  functions that broadcast carry their own gradients (jax.custom_vjp).

Only code traced for a CPU uses them (linear.py, platforms.on_cpu): GPU and TPU
programs keep nnx.Linear's and nnx.LayerNorm's own forms.
"""

from functools import partial

import jax
import jax.numpy as jnp


def sum_leading(x: jax.Array) -> jax.Array:
  """(..., C) -> (C,): the sum over every axis but the last."""
  rows = x.reshape(-1, x.shape[-1])
  return jnp.ones((rows.shape[0],), x.dtype) @ rows


def mean_last(x: jax.Array) -> jax.Array:
  """(..., C) -> (..., 1): the mean over the last axis."""
  return (x @ jnp.full((x.shape[-1],), 1.0 / x.shape[-1], x.dtype))[..., None]


def _written_transpose(x: jax.Array) -> jax.Array:
  """x.T written out: the barrier keeps XLA from folding it back into the product."""
  return jax.lax.optimization_barrier(x.T)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(rows: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
  """(R, I) @ (I, O) -> (R, O); the backward products take untransposed operands."""
  return jnp.dot(rows, kernel, precision=precision)


def _dense_fwd(rows, kernel, precision):
  return jnp.dot(rows, kernel, precision=precision), (rows, kernel)


def _dense_bwd(precision, saved, grad):
  rows, kernel = saved
  grad_rows = jnp.dot(grad, _written_transpose(kernel), precision=precision)
  grad_kernel = jnp.dot(_written_transpose(rows), grad, precision=precision)
  return grad_rows.astype(rows.dtype), grad_kernel.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def add_rows(x: jax.Array, bias: jax.Array) -> jax.Array:
  """(..., C) + (C,): a bias added to every row; its gradient is sum_leading."""
  return x + bias


def _add_rows_fwd(x, bias):
  return x + bias, None


def _add_rows_bwd(_, grad):
  return grad, sum_leading(grad)


add_rows.defvjp(_add_rows_fwd, _add_rows_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize_last(x: jax.Array, epsilon: float) -> jax.Array:
  """(x - mean) / sqrt(var + epsilon) over the last axis: LayerNorm before its affine step.

  The variance is the mean of the squared deviations (PyTorch's LayerNorm), not
  E[x^2] - E[x]^2.
  """
  return _normalize_fwd(x, epsilon)[0]


def _normalize_fwd(x, epsilon):
  centred = x - mean_last(x)
  inv_std = jax.lax.rsqrt(mean_last(centred * centred) + epsilon)
  normal = centred * inv_std
  return normal, (normal, inv_std)


def _normalize_bwd(epsilon, saved, grad):
  normal, inv_std = saved
  return (inv_std * (grad - mean_last(grad) - normal * mean_last(grad * normal)),)


normalize_last.defvjp(_normalize_fwd, _normalize_bwd)


@jax.custom_vjp
def scale_shift_rows(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
  """(..., C) * (C,) + (C,): LayerNorm's affine step; its parameter gradients are sum_leading."""
  return x * scale + shift


def _scale_shift_fwd(x, scale, shift):
  return x * scale + shift, (x, scale)


def _scale_shift_bwd(saved, grad):
  x, scale = saved
  return grad * scale, sum_leading(grad * x), sum_leading(grad)


scale_shift_rows.defvjp(_scale_shift_fwd, _scale_shift_bwd)
