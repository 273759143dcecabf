"""Building blocks shared by the backbones: MLP, stochastic depth, pre-norm encoder block."""

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax.initializers import dense_init


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), as torch.nn.GELU computes it by default.

  Written with erf: jax.nn.gelu(approximate=False) goes through erfc, which XLA:CPU
  evaluates about five times slower (benchmarks/levers.py).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2.0 ** -0.5, x.dtype)))


class Mlp(nnx.Module):
  """Linear -> GELU -> Dropout -> Linear -> Dropout, (B, N, C) -> (B, N, C_out)."""

  def __init__(self, dim: int, hidden: int, *, out_dim: int | None = None, dropout: float = 0.0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, out_dim or dim, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    x = gelu(self.fc1(x))
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    return self.dropout(self.fc2(x), deterministic=deterministic, rngs=rngs)


def drop_path(x: jax.Array, rate: float, *, deterministic: bool,
              rngs: nnx.Rngs | None) -> jax.Array:
  """Stochastic depth: zeroes whole residual branches per example, scaling the rest by 1/keep."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rngs.dropout(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

  def __init__(self, dim: int, attention: nnx.Module, mlp: nnx.Module, *, drop_path_rate: float,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attention = attention
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = mlp
    self.drop_path_rate = drop_path_rate

  def __call__(self, x, coords, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = x + drop_path(self.attention(self.norm1(x), coords, **kw), self.drop_path_rate, **kw)
    return x + drop_path(self.mlp(self.norm2(x), **kw), self.drop_path_rate, **kw)
