"""Weight initialisers shared by the backbones (those of the reference code)."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# Linear and conv weights: xavier-normal, biases zero (the reference's init_weights).
dense_init = nnx.initializers.xavier_normal()
# Position embeddings and CLS tokens: standard normal (torch.randn in the reference).
embedding_init = nnx.initializers.normal(stddev=1.0)


def fused_dense_init(parts: int) -> Callable:
  """Xavier-normal for one of `parts` equal projections the reference fuses into one Linear.

  The reference draws its fused (fan_in, parts * fan_out) kernel (ViT's and PiT's to_qkv,
  parts=3; CaiT's to_kv, parts=2) with std sqrt(2 / (fan_in + parts * fan_out)); here
  each part is its own (fan_in, fan_out) kernel, drawn with that same std, so the
  parameter layout stays one Linear per projection.
  """

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    fan_in, fan_out = math.prod(shape[:-1]), parts * shape[-1]
    # variance_scaling's 'fan_in' variance is scale / fan_in: this scale gives 2 / (in + out).
    scale = 2.0 * fan_in / (fan_in + fan_out)
    return nnx.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal')(key, shape, dtype)

  return init


def torch_default_init(module: nnx.Module, rngs: nnx.Rngs) -> None:
  """Redraws every Linear and Conv weight in `module` as torch.nn's default initialisation.

  For references that keep PyTorch's defaults (no init_weights pass): kernel and bias
  uniform in +-1/sqrt(fan_in), fan_in counting the receptive field for convolutions
  (kaiming-uniform with a=sqrt(5)). LayerNorms keep ones and zeros, as in PyTorch.
  """
  layers = [node for _, node in nnx.iter_graph(module) if isinstance(node, (nnx.Linear, nnx.Conv))]
  key = rngs.params()
  for i, layer in enumerate(layers):
    kernel_key, bias_key = jax.random.split(jax.random.fold_in(key, i))
    shape = layer.kernel.shape
    bound = math.prod(shape[:-1]) ** -0.5
    # New variables rather than in-place writes: much cheaper to trace under eval_shape.
    layer.kernel = nnx.Param(
      jax.random.uniform(kernel_key, shape, layer.kernel.dtype, -bound, bound)
    )
    if layer.bias is not None:
      layer.bias = nnx.Param(
        jax.random.uniform(bias_key, layer.bias.shape, layer.bias.dtype, -bound, bound)
      )


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
