"""cpu_forms.py's products, sums and gradients against NumPy, and the accelerators' programs.

On a CPU, Linear and LayerNorm run cpu_forms' versions; elsewhere they are nnx.Linear and
nnx.LayerNorm, and the programs lowered for CUDA and TPU are the ones those give.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import gmm_vit_cifar10, tiny
from gmm_vit_jax import cpu_forms, lower, platforms
from gmm_vit_jax.linear import LayerNorm, Linear

RNG = np.random.default_rng(0)


def normal(*shape, loc=0.0, scale=1.0):
  return (RNG.normal(size=shape) * scale + loc).astype(np.float32)


def vjp(fn, *args, cotangent):
  out, pull = jax.vjp(fn, *map(jnp.asarray, args))
  return np.asarray(out), [np.asarray(g) for g in pull(jnp.asarray(cotangent))]


def test_sums_are_numpy_sums():
  x = normal(3, 5, 7)
  np.testing.assert_allclose(cpu_forms.sum_leading(x), x.sum((0, 1)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    cpu_forms.mean_last(x), x.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6
  )


def test_dense_and_its_gradients():
  rows, kernel, grad = normal(9, 4), normal(4, 6), normal(9, 6)
  out, (d_rows, d_kernel) = vjp(cpu_forms.dense, rows, kernel, cotangent=grad)
  np.testing.assert_allclose(out, rows @ kernel, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_rows, grad @ kernel.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_kernel, rows.T @ grad, rtol=1e-5, atol=1e-5)


def test_add_rows_and_scale_shift_rows_sum_their_gradients_over_rows():
  x, scale, shift, grad = normal(2, 5, 3), normal(3), normal(3), normal(2, 5, 3)
  out, (d_x, d_bias) = vjp(cpu_forms.add_rows, x, shift, cotangent=grad)
  np.testing.assert_allclose(out, x + shift, rtol=1e-6)
  np.testing.assert_array_equal(d_x, grad)
  np.testing.assert_allclose(d_bias, grad.sum((0, 1)), rtol=1e-5, atol=1e-5)
  out, (d_x, d_scale, d_shift) = vjp(cpu_forms.scale_shift_rows, x, scale, shift, cotangent=grad)
  np.testing.assert_allclose(out, x * scale + shift, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(d_x, grad * scale, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(d_scale, (grad * x).sum((0, 1)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_shift, grad.sum((0, 1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('width', [7, 192])
def test_normalize_last_and_its_gradient(width):
  x, grad, eps = normal(4, 6, width, loc=3.0, scale=2.0), normal(4, 6, width), 1e-5
  out, (d_x,) = vjp(lambda x: cpu_forms.normalize_last(x, eps), x, cotangent=grad)
  x64, g64 = x.astype(np.float64), grad.astype(np.float64)
  centred = x64 - x64.mean(-1, keepdims=True)
  inv_std = 1 / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
  normal_ = centred * inv_std
  # d/dx of (x - mean) * inv_std, written out: inv_std (g - mean(g) - xhat mean(g xhat)).
  want = inv_std * (
    g64 - g64.mean(-1, keepdims=True) - normal_ * (g64 * normal_).mean(-1, keepdims=True)
  )
  np.testing.assert_allclose(out, normal_, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(d_x, want, rtol=1e-4, atol=1e-5)


def test_layer_norm_on_the_cpu_equals_nnx_layer_norm_with_its_gradients():
  x = jnp.asarray(normal(3, 5, 12, loc=1.0, scale=3.0))
  ours, theirs = LayerNorm(12, rngs=nnx.Rngs(0)), nnx.LayerNorm(12, rngs=nnx.Rngs(0))
  for layer in (ours, theirs):
    layer.scale[...] = jnp.asarray(np.linspace(0.5, 1.5, 12, dtype=np.float32))
    layer.bias[...] = jnp.asarray(np.linspace(-1.0, 1.0, 12, dtype=np.float32))
  grads = [
    nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x)) * x), argnums=(0, 1))(layer, x)
    for layer in (ours, theirs)
  ]
  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='an XLA:CPU program')
def test_linear_backward_products_take_untransposed_operands():
  """Every matrix product of a compiled MLP gradient is (rows, k) x (k, cols): nnx.Linear's
  have transposed operands, ours write the transposes out first (cpu_forms.dense). The
  bias gradients, products with a ones vector, have a result of one row."""

  def product_dims(linear):
    fc1, fc2 = linear(24, 48, rngs=nnx.Rngs(0)), linear(48, 24, rngs=nnx.Rngs(1))
    loss = lambda fc1, fc2, x: jnp.sum(fc2(jax.nn.relu(fc1(x))) ** 2)
    x = jnp.ones((8, 16, 24))
    hlo = jax.jit(nnx.grad(loss, argnums=(0, 1, 2))).lower(fc1, fc2, x).compile().as_text()
    found = re.findall(
      r'= f32\[(\d+),\d+\]\S* dot\([^)]*\), lhs_contracting_dims=\{(\d)\}, '
      r'rhs_contracting_dims=\{(\d)\}',
      hlo,
    )
    return [dims for rows, *dims in found if rows != '1']

  theirs, ours = product_dims(nnx.Linear), product_dims(Linear)
  assert len(ours) >= 6 and {tuple(d) for d in ours} == {('1', '0')}
  assert {tuple(d) for d in theirs} - {('1', '0')}


def without_location(module: str) -> str:
  return re.sub(r'\s*loc\([^\n]*\)|\n#loc[^\n]*', '', module)


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_accelerator_programs_are_the_library_layers(platform, monkeypatch):
  """The train and eval steps lowered for CUDA and TPU are the same program whether Linear
  and LayerNorm are this project's or nnx's own: the CPU forms never reach them."""
  config = tiny.shrink(gmm_vit_cifar10.get_config())

  def modules():
    with platforms.lowering_for(platform):
      return {
        name: without_location(lower._export(step, args, platform).mlir_module())
        for name, (step, args) in lower._steps(config).items()
      }

  ours = modules()
  monkeypatch.setattr(Linear, '__call__', nnx.Linear.__call__)
  monkeypatch.setattr(LayerNorm, '__call__', nnx.LayerNorm.__call__)
  theirs = modules()
  assert set(ours) == {'train', 'eval'}
  assert ours == theirs
