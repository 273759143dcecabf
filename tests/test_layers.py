"""The shared building blocks (models/layers.py, linear.py) against independent computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax import platforms
from gmm_vit_jax.linear import Linear
from gmm_vit_jax.models.layers import DepthwiseConv, depthwise_conv, gelu


def test_gelu_is_the_exact_erf_gelu():
  x = np.linspace(-9.0, 9.0, 181).astype(np.float32)
  want = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
  np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(x))), want, rtol=1e-6, atol=1e-6)


def test_gelu_gradient_is_phi_plus_x_times_the_normal_density():
  x = np.linspace(-6.0, 6.0, 121).astype(np.float32)
  want = np.array(
    [
      0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
      + v * math.exp(-v * v / 2.0) / math.sqrt(2.0 * math.pi)
      for v in x.astype(np.float64)
    ]
  )
  got = jax.vmap(jax.grad(gelu))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def numpy_depthwise(x, kernel, stride, pad):
  """Direct loops: output channel o reads input channel o // m."""
  kh, kw, _, out_channels = kernel.shape
  m = out_channels // x.shape[-1]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h = (xp.shape[1] - kh) // stride + 1
  out_w = (xp.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, out_channels))
  for o in range(out_channels):
    for y in range(out_h):
      for z in range(out_w):
        patch = xp[:, y * stride : y * stride + kh, z * stride : z * stride + kw, o // m]
        out[:, y, z, o] = np.sum(patch * kernel[:, :, 0, o], axis=(1, 2))
  return out


@pytest.mark.parametrize(
  'multiplier, stride, pad, side', [(1, 1, 1, 5), (2, 2, 1, 5), (2, 2, 1, 4), (1, 2, 0, 7)]
)
def test_depthwise_conv_matches_numpy(multiplier, stride, pad, side):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, side, side, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 3 * multiplier)).astype(np.float32)
  got = depthwise_conv(
    jnp.asarray(x), jnp.asarray(kernel), (stride, stride), ((pad, pad), (pad, pad))
  )
  np.testing.assert_allclose(
    np.asarray(got), numpy_depthwise(x, kernel, stride, pad), rtol=1e-5, atol=1e-5
  )


def test_depthwise_module_equals_the_grouped_nnx_conv_and_its_gradients():
  rngs = nnx.Rngs(0)
  ours = DepthwiseConv(4, 8, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
  theirs = nnx.Conv(
    4, 8, (3, 3), strides=2, padding=((1, 1), (1, 1)), feature_group_count=4, rngs=nnx.Rngs(1)
  )
  assert ours.kernel.shape == theirs.kernel.shape and ours.bias.shape == theirs.bias.shape
  theirs.kernel = nnx.Param(ours.kernel[...])
  theirs.bias = nnx.Param(jax.random.normal(jax.random.key(2), (8,)))
  ours.bias = nnx.Param(theirs.bias[...])
  x = jax.random.normal(jax.random.key(3), (2, 9, 9, 4))

  def grads(conv):
    loss = lambda c, x: jnp.sum(jnp.sin(c(x)))
    return nnx.grad(loss, argnums=(0, 1))(conv, x)

  np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
  (g_ours, gx_ours), (g_theirs, gx_theirs) = grads(ours), grads(theirs)
  np.testing.assert_allclose(gx_ours, gx_theirs, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_ours.kernel[...], g_theirs.kernel[...], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_ours.bias[...], g_theirs.bias[...], rtol=1e-4, atol=1e-4)


def test_depthwise_module_rejects_a_width_that_is_no_multiple():
  with pytest.raises(ValueError, match='multiple of in_features'):
    DepthwiseConv(4, 6, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))


def test_linear_is_x_times_kernel_plus_bias_over_the_last_axis_with_its_gradients():
  layer = Linear(4, 3, rngs=nnx.Rngs(0))
  layer.bias = nnx.Param(jax.random.normal(jax.random.key(1), (3,)))
  x = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 6, 4)))
  kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
  np.testing.assert_allclose(layer(jnp.asarray(x)), x @ kernel + bias, rtol=1e-5, atol=1e-6)

  # d/d(params, x) of sum(sin(y)): the cotangent is cos(y), summed over every leading axis.
  grads, dx = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))(layer, x)
  cotangent = np.cos(x @ kernel + bias).reshape(-1, 3)
  rows = x.reshape(-1, 4)
  np.testing.assert_allclose(grads.kernel[...], rows.T @ cotangent, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grads.bias[...], cotangent.sum(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dx, (cotangent @ kernel.T).reshape(x.shape), rtol=1e-4, atol=1e-5)


def test_linear_has_the_parameters_of_nnx_linear():
  ours, theirs = Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  ours_state, theirs_state = nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
  assert jax.tree.structure(ours_state) == jax.tree.structure(theirs_state)
  for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state)):
    np.testing.assert_array_equal(a, b)


def primitives(fn, *args) -> set[str]:
  """Primitive names of fn's jaxpr; products as 'dot_general/<rank of the left operand>'."""
  return {
    eqn.primitive.name
    + (f'/{eqn.invars[0].aval.ndim}' if eqn.primitive.name == 'dot_general' else '')
    for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns
  }


@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
def test_cpu_forms_are_chosen_for_the_cpu_only_and_agree_with_the_library_forms(platform):
  """Off XLA:CPU the layers take the library's own forms (nnx.Linear's contraction of the
  (B, N, in) array, not cpu_forms' products; the grouped convolution; jax.nn.gelu); both
  give the same values and gradients from the same parameters, so checkpoints do not
  depend on the platform."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  linear = Linear(4, 3, rngs=nnx.Rngs(0))
  conv = DepthwiseConv(4, 8, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(1))
  conv.bias = nnx.Param(jax.random.normal(jax.random.key(2), (8,)))
  grad_of = lambda layer: nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))(layer, x)
  runs = {}
  for where in ('cpu', platform):
    with platforms.lowering_for(where):
      runs[where] = dict(
        linear=primitives(lambda x: linear(x), x),
        conv=primitives(lambda x: conv(x), x),
        gelu=primitives(lambda x: gelu(x), x),
        values=(linear(x), conv(x), gelu(x)),
        grads=(grad_of(linear), grad_of(conv), jax.grad(lambda x: jnp.sum(gelu(x)))(x)),
        params=nnx.state(Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Param),
      )
  cpu, other = runs['cpu'], runs[platform]
  assert 'custom_vjp_call' in cpu['linear'] and 'custom_vjp_call' not in other['linear']
  assert 'dot_general/4' in other['linear']
  assert 'conv_general_dilated' not in cpu['conv'] and 'conv_general_dilated' in other['conv']
  assert 'erf' in cpu['gelu'] and 'erf' not in other['gelu'] and 'erfc' in other['gelu']
  for a, b in zip(
    jax.tree.leaves((cpu['values'], cpu['grads'], cpu['params'])),
    jax.tree.leaves((other['values'], other['grads'], other['params'])),
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
