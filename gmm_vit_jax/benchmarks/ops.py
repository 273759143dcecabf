"""Forward and backward time of the ops whose formulation the models choose for speed.

    python -m gmm_vit_jax.benchmarks.ops [--batch_size=128] [--repeats=20]

Each row times one jitted forward and backward pass (the gradient with respect to every
input) of two formulations of the same function, on the shapes of the CIFAR-size models,
and checks that they agree:
- exact GELU on the GMM-ViT's MLP activations, (B, 64, 384): jax.nn.gelu(approximate=False),
  which goes through erfc, against models/layers.gelu, which uses erf;
- the depthwise 3x3 stride-2 convolutions of PiT's two pooling layers, (B, 16, 16, 96)
  and (B, 8, 8, 192) with channel multiplier 2: lax.conv_general_dilated with
  feature_group_count against models/layers.depthwise_conv;
- the GMM-ViT MLP, (B, 64, 192) -> 384 -> 192 with GELU between: its two dense layers
  as nnx.Linear, which contracts the (B, 64, in) array directly, against
  gmm_vit_jax/linear.Linear, which flattens it to (B * 64, in) rows first. A single
  layer times the same either way; the difference shows where one layer's gradient
  feeds the next, as in every model;
- one dense product, GMM-T2T's (B * 64, 512) x (512, 256): jnp.dot, whose gradients
  multiply strided transposed operands, against cpu_forms.dense, which writes the
  transposes out first;
- a bias over GMM-ViT's (B * 65, 192) token rows: x + bias, whose gradient is a summed
  reduction, against cpu_forms.add_rows, whose gradient is a product with a ones vector;
- LayerNorm over (B, 65, 192): nnx.LayerNorm against gmm_vit_jax/linear.LayerNorm
  (cpu_forms' means and gradients);
- the attention core with the GMM's multiplicative mask (attention/core.py) on the
  heads of GMM-Swin's first stage, (B * 64 windows, 3, 16, 32): 'blockwise' against
  the materialised 'xla', which 'auto' picks on a CPU for a window's 16 keys.
Times are the median of --repeats calls after a warm-up, in milliseconds, under the
trainer's CPU settings (cpu_runtime.py: its XLA flags, and the calls' memory kept
mapped between calls as the paper configs keep a step's).
"""

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from gmm_vit_jax import cli, configs_common, cpu_forms, cpu_runtime
from gmm_vit_jax.attention import core
from gmm_vit_jax.attention.masks import MaskValues
from gmm_vit_jax.linear import LayerNorm, Linear
from gmm_vit_jax.models.layers import depthwise_conv, gelu

flags.DEFINE_integer('batch_size', 128, 'Leading dimension of every input.')
flags.DEFINE_integer('repeats', 20, 'Timed calls per formulation; the median is reported.')
FLAGS = flags.FLAGS

PADDING = ((1, 1), (1, 1))


def grouped_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (2, 2),
    PADDING,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=x.shape[-1],
  )


def slices_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return depthwise_conv(x, kernel, (2, 2), PADDING)


def mlp(linear: type[nnx.Linear]) -> Callable:
  """(x, w1, b1, w2, b2) -> second layer of GELU(first layer of x), layers of type `linear`."""

  def run(x, *weights):
    for i, (kernel, bias) in enumerate(zip(weights[::2], weights[1::2])):
      layer = linear(*kernel.shape, rngs=nnx.Rngs(0))
      layer.kernel, layer.bias = nnx.Param(kernel), nnx.Param(bias)
      x = layer(gelu(x) if i else x)
    return x

  return run


def layer_norm(norm: type[nnx.LayerNorm]) -> Callable:
  """(x, scale, bias) -> a LayerNorm of type `norm` over x's last axis."""

  def run(x, scale, bias):
    layer = norm(x.shape[-1], epsilon=1e-5, rngs=nnx.Rngs(0))
    layer.scale, layer.bias = nnx.Param(scale), nnx.Param(bias)
    return layer(x)

  return run


def attention_core(implementation: str) -> Callable:
  """(q, k, v, mask values) -> the core `implementation` with a multiplicative mask, in
  as many blockwise slices as the configs' attention runs."""

  def run(q, k, v, values):
    valid = jnp.ones(values.shape[-2:], bool)
    return core.attend(
      q,
      k,
      v,
      implementation=implementation,
      scale=q.shape[-1] ** -0.5,
      mask=MaskValues(values, valid, 'multiply'),
      bias=None,
      max_slices=configs_common.attention().max_slices,
    )

  return run


def forward_backward(fn: Callable) -> Callable:
  """fn(*inputs) -> jitted (inputs, cotangent) -> (output, gradients of the inputs)."""

  def run(inputs, cotangent):
    out, vjp = jax.vjp(fn, *inputs)
    return out, vjp(cotangent)

  return jax.jit(run)


def median_ms(fn: Callable, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def cases(batch_size: int) -> list[tuple[str, list[np.ndarray], Callable, Callable]]:
  """(name, inputs, the library formulation, the one the models use)."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  rows = [
    (
      'GELU (B, 64, 384)',
      [normal(batch_size, 64, 384)],
      lambda x: jax.nn.gelu(x, approximate=False),
      gelu,
    )
  ]
  for side, dim in ((16, 96), (8, 192)):
    rows.append(
      (
        f'depthwise conv (B, {side}, {side}, {dim}), x2 stride 2',
        [normal(batch_size, side, side, dim), 0.1 * normal(3, 3, 1, 2 * dim)],
        grouped_conv,
        slices_conv,
      )
    )
  rows.append(
    (
      'MLP (B, 64, 192) -> 384 -> 192',
      [
        normal(batch_size, 64, 192),
        0.05 * normal(192, 384),
        normal(384),
        0.05 * normal(384, 192),
        normal(192),
      ],
      mlp(nnx.Linear),
      mlp(Linear),
    )
  )
  rows.append(
    (
      'dense (B*64, 512) -> 256',
      [normal(batch_size * 64, 512), 0.05 * normal(512, 256)],
      jnp.dot,
      cpu_forms.dense,
    )
  )
  rows.append(
    (
      'bias over (B*65, 192) rows',
      [normal(batch_size * 65, 192), normal(192)],
      jnp.add,
      cpu_forms.add_rows,
    )
  )
  rows.append(
    (
      'LayerNorm (B, 65, 192)',
      [normal(batch_size, 65, 192), 1.0 + 0.1 * normal(192), normal(192)],
      layer_norm(nnx.LayerNorm),
      layer_norm(LayerNorm),
    )
  )
  windows = [normal(batch_size * 64, 3, 16, 32) for _ in range(3)]
  rows.append(
    (
      'GMM core, Swin windows (B*64, 3, 16, 32)',
      [*windows, 1.0 + 0.1 * normal(3, 16, 16)],
      attention_core('blockwise'),
      attention_core('xla'),
    )
  )
  return rows


def compare(batch_size: int, repeats: int) -> list[dict]:
  results = []
  rng = np.random.default_rng(1)
  for name, inputs, library, ours in cases(batch_size):
    inputs = [jnp.asarray(x) for x in inputs]
    out_shape = jax.eval_shape(library, *inputs).shape
    args = (inputs, jnp.asarray(rng.normal(size=out_shape).astype(np.float32)))
    library_fn, our_fn = forward_backward(library), forward_backward(ours)
    for want, got in zip(jax.tree.leaves(library_fn(*args)), jax.tree.leaves(our_fn(*args))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-3)
    results.append(
      dict(
        op=name,
        library_ms=median_ms(library_fn, args, repeats),
        ours_ms=median_ms(our_fn, args, repeats),
      )
    )
  return results


def main(argv):
  del argv
  cpu_runtime.set_xla_flags()
  cpu_runtime.keep_step_memory()
  device = jax.devices()[0]
  print(
    f'forward + backward, batch {FLAGS.batch_size}, float32, on {device.platform} '
    f'({device.device_kind}), jax {jax.__version__}'
  )
  print(f'{"op":44s}{"library ms":>12s}{"ours ms":>10s}{"speed-up":>10s}')
  for row in compare(FLAGS.batch_size, FLAGS.repeats):
    print(
      f'{row["op"]:44s}{row["library_ms"]:12.2f}{row["ours_ms"]:10.2f}'
      f'{row["library_ms"] / row["ours_ms"]:9.1f}x'
    )


if __name__ == '__main__':
  cli.run_app(main)
