"""Building blocks shared by the backbones: MLP, depthwise convolution, stochastic depth,
pre-norm encoder block."""

import jax
import jax.numpy as jnp
from flax import nnx

from gmm_vit_jax import platforms
from gmm_vit_jax.initializers import dense_init
from gmm_vit_jax.linear import LayerNorm, Linear


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), as torch.nn.GELU computes it by default.

  Written with erf on XLA:CPU: jax.nn.gelu(approximate=False) goes through erfc, which
  XLA:CPU evaluates several times slower (benchmarks/ops.py). Elsewhere it is
  jax.nn.gelu's own form, which GPU and TPU compilers were never measured against.
  """
  if not platforms.on_cpu():
    return jax.nn.gelu(x, approximate=False)
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(2.0**-0.5, x.dtype)))


class Mlp(nnx.Module):
  """Linear -> GELU -> Dropout -> Linear -> Dropout, (B, N, C) -> (B, N, C_out)."""

  def __init__(
    self,
    dim: int,
    hidden: int,
    *,
    out_dim: int | None = None,
    dropout: float = 0.0,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.fc1 = Linear(dim, hidden, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.fc2 = Linear(hidden, out_dim or dim, dtype=dtype, kernel_init=dense_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    x = gelu(self.fc1(x))
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    return self.dropout(self.fc2(x), deterministic=deterministic, rngs=rngs)


def depthwise_conv(
  x: jax.Array,
  kernel: jax.Array,
  strides: tuple[int, int],
  padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
  """Depthwise 2-D convolution as a sum of shifted, strided slices; no bias.

  x: (B, H, W, C); kernel: (kh, kw, 1, C * m), m output channels per input channel;
  padding: ((top, bottom), (left, right)). Returns (B, H', W', C * m), output channel
  c * m + j reading input channel c: lax.conv_general_dilated with feature_group_count=C.
  """
  kh, kw, _, out_channels = kernel.shape
  multiplier = out_channels // x.shape[-1]
  if multiplier > 1:
    x = jnp.repeat(x, multiplier, axis=-1)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  (sh, sw), (_, h, w, _) = strides, x.shape
  out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  taps = [
    jax.lax.slice(
      x,
      (0, i, j, 0),
      (x.shape[0], i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, out_channels),
      (1, sh, sw, 1),
    )
    * kernel[i, j, 0]
    for i in range(kh)
    for j in range(kw)
  ]
  return sum(taps[1:], taps[0])


class DepthwiseConv(nnx.Conv):
  """nnx.Conv with one group per input channel, computed by depthwise_conv.

  Same parameters as nnx.Conv(feature_group_count=in_features), so checkpoints and
  initialisers treat it as one. XLA:CPU's kernel gradient of a grouped convolution took
  2.5 s of a 3.4 s PiT train step at batch 32; the slices' gradients are elementwise
  (benchmarks/ops.py). Only on XLA:CPU: GPU and TPU run grouped convolutions as library
  kernels, and kh * kw full-size slices would cost them memory traffic instead.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int],
    *,
    strides: int = 1,
    padding: tuple[tuple[int, int], tuple[int, int]],
    use_bias: bool = True,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    if out_features % in_features:
      raise ValueError(
        f'a depthwise convolution needs out_features ({out_features}) to be a '
        f'multiple of in_features ({in_features}).'
      )
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      strides=strides,
      padding=padding,
      feature_group_count=in_features,
      use_bias=use_bias,
      dtype=dtype,
      rngs=rngs,
      **kwargs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', out_features)."""
    if not platforms.on_cpu():
      return super().__call__(x)
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    y = depthwise_conv(x, kernel, strides, tuple(map(tuple, self.padding)))
    return y if bias is None else y + bias


def drop_path(
  x: jax.Array, rate: float, *, deterministic: bool, rngs: nnx.Rngs | None
) -> jax.Array:
  """Stochastic depth: zeroes whole residual branches per example, scaling the rest by 1/keep."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rngs.dropout(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x)))."""

  def __init__(
    self,
    dim: int,
    attention: nnx.Module,
    mlp: nnx.Module,
    *,
    drop_path_rate: float,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.norm1 = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attention = attention
    self.norm2 = LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.mlp = mlp
    self.drop_path_rate = drop_path_rate

  def __call__(self, x, coords, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    x = x + drop_path(self.attention(self.norm1(x), coords, **kw), self.drop_path_rate, **kw)
    return x + drop_path(self.mlp(self.norm2(x), **kw), self.drop_path_rate, **kw)
