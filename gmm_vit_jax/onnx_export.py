"""ONNX export of an inference bundle: model.onnx beside its other files.

model.onnx holds the bundle's forward pass with its weights: input 'images', uint8
(B, H, W, C) with a dynamic batch B; output 'logits', float32 (B, num_classes); the
normalisation is inside, as in forward.jax_export. It runs in float32 whatever the
bundle's compute dtype, since ONNX runtimes lack bfloat16 kernels on most devices.

    python -m gmm_vit_jax.export --workdir=RUN --out=DIR --format=onnx

jax2onnx converts the forward pass's jaxpr. The pass is traced here first, so the
converter sees JAX primitives only, never the Flax modules it would otherwise rewrite;
nested jits are inlined, zero padding (which the converter cannot size for a dynamic
batch) becomes a concatenation, and so does a stack (which it does not know).
"""

import contextlib
import io
import logging
import os

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jax_core

from gmm_vit_jax import errors, export
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.models import build_model

ONNX_FILE = 'model.onnx'
# Primitives whose body is a closed jaxpr run on the same arguments: inlined.
_INLINED = {jax_core.primitives.jit_p: 'jaxpr', jax_core.primitives.custom_jvp_call_p: 'call_jaxpr'}


def _pad_by_concatenation(operand: jax.Array, value: jax.Array, *, padding_config) -> jax.Array:
  """lax.pad with non-negative edge padding and no interior padding, as concatenations."""
  x = operand
  for axis, (low, high, _) in enumerate(padding_config):
    blocks = []
    for size in (low, high):
      shape = x.shape[:axis] + (size,) + x.shape[axis + 1 :]
      blocks.append(jax.lax.broadcast_in_dim(value, shape, ()) if size else None)
    x = jnp.concatenate([b for b in (blocks[0], x, blocks[1]) if b is not None], axis=axis)
  return x


def _edge_padding(eqn) -> bool:
  return eqn.primitive is jax_core.primitives.pad_p and all(
    low >= 0 and high >= 0 and interior == 0 for low, high, interior in eqn.params['padding_config']
  )


def _evaluate(jaxpr: jax_core.Jaxpr, consts, *args) -> list:
  """jax.core.eval_jaxpr with nested jits inlined, edge padding and stacks concatenated."""
  env = {}
  read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    if eqn.primitive in _INLINED:
      body = eqn.params[_INLINED[eqn.primitive]]
      outputs = _evaluate(body.jaxpr, body.consts, *inputs)
    elif _edge_padding(eqn):
      outputs = [_pad_by_concatenation(*inputs, padding_config=eqn.params['padding_config'])]
    elif eqn.primitive.name == 'stack':
      axis = eqn.params['axis']
      outputs = [jnp.concatenate([jnp.expand_dims(x, axis) for x in inputs], axis=axis)]
    else:
      outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
    env.update(zip(eqn.outvars, outputs))
  return [read(v) for v in jaxpr.outvars]


def float32_model(bundle: export.Bundle) -> nnx.Module:
  """The bundle's model rebuilt to compute in float32, with its parameters."""
  config = bundle.config.model.copy_and_resolve_references()
  config.dtype = 'float32'
  preprocess = bundle.preprocess
  model = build_model(
    config,
    num_classes=preprocess['num_classes'],
    image_size=preprocess['image_size'],
    channels=preprocess['channels'],
    rngs=nnx.Rngs(0),
  )
  export.set_flat_variables(model, bundle.params)
  return model


def to_onnx(model: nnx.Module, preprocess: dict):
  """The onnx.ModelProto of uint8 images (B, H, W, C) -> float32 logits (B, num_classes)."""
  mean, std = tuple(preprocess['mean']), tuple(preprocess['std'])

  def forward(images):
    return model(normalize(images, mean, std), deterministic=True).astype(jnp.float32)

  (batch,) = jax.export.symbolic_shape('batch')
  size, channels = preprocess['image_size'], preprocess['channels']
  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.uint8)
  closed = jax.make_jaxpr(forward)(images)
  traced = lambda x: _evaluate(closed.jaxpr, closed.consts, x)[0]
  with _quiet_converter():
    import jax2onnx  # Only exports to ONNX need it.

    return jax2onnx.to_onnx(
      traced,
      [images],
      model_name=model.__class__.__name__,
      input_names=['images'],
      output_names=['logits'],
    )


@contextlib.contextmanager
def _quiet_converter():
  """The converter logs every plugin it skips and each value it leaves untyped, and prints
  as it lowers some ops: none of it is the user's to act on."""
  loggers = [logging.getLogger(name) for name in ('jax2onnx', 'onnx_ir')]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def write_onnx(bundle_dir: str) -> str:
  """Converts the bundle in bundle_dir and writes its ONNX_FILE there; returns the path."""
  bundle = export.load(bundle_dir)
  name = bundle.config.model.name
  try:
    proto = to_onnx(float32_model(bundle), bundle.preprocess)
  except ImportError as e:
    raise errors.UserError(
      f'--format=onnx needs jax2onnx ({e}); pip install -r requirements.txt installs it.'
    ) from None
  except Exception as e:  # The converter's own errors name the primitive it cannot take.
    cause = ' '.join(str(e).split())[:300]
    raise errors.UserError(
      f'ONNX export of backbone {name!r} failed: {type(e).__name__}: '
      f'{cause}. The bundle itself is written; serve forward.jax_export '
      'instead.'
    ) from None
  path = os.path.join(bundle_dir, ONNX_FILE)
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return path
