"""The shared building blocks of models/layers.py against independent computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gmm_vit_jax.models.layers import gelu


def test_gelu_is_the_exact_erf_gelu():
  x = np.linspace(-9.0, 9.0, 181).astype(np.float32)
  want = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
  np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(x))), want, rtol=1e-6, atol=1e-6)


def test_gelu_gradient_is_phi_plus_x_times_the_normal_density():
  x = np.linspace(-6.0, 6.0, 121).astype(np.float32)
  want = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
                   + v * math.exp(-v * v / 2.0) / math.sqrt(2.0 * math.pi)
                   for v in x.astype(np.float64)])
  got = jax.vmap(jax.grad(gelu))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
