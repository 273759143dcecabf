"""Lowers a config's train and eval steps for CUDA or TPU on any machine, a CPU one included.

    python -m gmm_vit_jax.lower --config=configs/gmm_vit_cifar10.py --platform=cuda \
        [--batch_size=N] [--config.model.dtype=bfloat16]

The steps are the trainer's own (create_train_state, make_train_step, make_eval_step),
built and traced for the target platform (gmm_vit_jax/platforms.py): model.dtype 'auto'
and the attention core 'auto' resolve as they would on that platform, so a CUDA lowering
holds the cuDNN attention call wherever the core would choose it there. Each step is
lowered with jax.export, which needs no device of that platform. One JSON line per run:
- platform, model, mask, dtype (resolved), batch_size, eval_batch_size, devices (the
  mesh lowered for: this machine's device count);
- train/eval: stablehlo_bytes (the serialized StableHLO module), custom_calls (call
  target -> count), products (the precision of its dot products and convolutions ->
  count: HIGHEST for a float32 model on every platform, DEFAULT, the platform's own,
  for bfloat16; gmm_vit_jax/precision.py), flops: XLA's HLO cost analysis of the module
  lowered for the platform, before optimisation (flops_source says so). A cuDNN attention call is
  opaque to that analysis; where the module holds one, the FLOPs are those of the same
  step with the attention core 'xla', the same products and softmax.
"""

import collections
import json
import re

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax import export
from ml_collections import config_flags

from gmm_vit_jax import cli, console, jax_private, platforms, sharding
from gmm_vit_jax.data.info import dataset_info
from gmm_vit_jax.models import compute_dtype
from gmm_vit_jax.training.optimizer import make_optimizer
from gmm_vit_jax.training.state import Metrics, create_train_state
from gmm_vit_jax.training.step import make_eval_step, make_train_step

PLATFORMS = ('cuda', 'tpu')
# The schedule's length only sets constants in the step; any value lowers the same ops.
SCHEDULE_STEPS_PER_EPOCH = 1000
# jax.nn.dot_product_attention asks the installed cuDNN for its version while tracing.
# Without the CUDA wheel there is none; the lowering then states this one, the cuDNN 9
# line that jax[cuda13] 0.10 installs (the version only gates features the model does not use).
ASSUMED_CUDNN_VERSION = 91000
# The cuDNN attention calls carry no compatibility guarantee across jaxlib versions, so
# jax.export refuses them unless told otherwise; these modules are inspected, not stored.
CUDNN_CALLS = tuple(
  export.DisabledSafetyCheck.custom_call(name)
  for name in jax_private.cudnn_attention_call_targets()
)
CUSTOM_CALL = re.compile(r'stablehlo\.custom_call @([^\s(]+)\(')
PRODUCT = re.compile(r'= stablehlo\.(?:dot_general|convolution)\b(.*)')
# dot_general states `precision = [HIGHEST, HIGHEST]`, convolution
# `precision_config = [#stablehlo<precision HIGHEST>, ...]`.
PRECISION = re.compile(r'precision(?:_config)? = \[(?:#stablehlo<precision )?(\w+)')
FLOPS_SOURCE = 'xla_hlo_cost_analysis_of_the_lowered_module'


def _steps(config: ml_collections.ConfigDict):
  """The trainer's jitted steps and abstract arguments for them, on this machine's mesh."""
  info = dataset_info(config.dataset)
  mesh = sharding.make_mesh()
  sharding.check_batch_size('batch_size', config.batch_size, mesh)
  sharding.check_batch_size('eval_batch_size', config.eval_batch_size, mesh)
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  tx = make_optimizer(config, SCHEDULE_STEPS_PER_EPOCH)
  graphdef, state = create_train_state(config, tx, replicated, abstract=True)
  rows = max(config.batch_size, config.eval_batch_size)
  side, channels = info['image_size'], info['channels']
  images = jax.ShapeDtypeStruct((rows, side, side, channels), np.uint8, sharding=replicated)
  labels = jax.ShapeDtypeStruct((rows,), np.int32, sharding=replicated)
  metrics = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct((), np.float32, sharding=replicated), Metrics.zeros()
  )
  batch = lambda n, dtype: jax.ShapeDtypeStruct((n,), dtype, sharding=batched)
  train = (
    make_train_step(graphdef, tx, config, info, out_sharding=replicated),
    (
      state,
      metrics,
      images,
      labels,
      batch(config.batch_size, np.int32),
      config.patch_selection.kind != 'none',
    ),
  )
  evaluate = (
    make_eval_step(graphdef, info, out_sharding=replicated, model_dtype=config.model.dtype),
    (
      state.params,
      state.buffers,
      metrics,
      images,
      labels,
      batch(config.eval_batch_size, np.int32),
      batch(config.eval_batch_size, np.float32),
    ),
  )
  return dict(train=train, eval=evaluate)


def products(module: str) -> dict[str, int]:
  """The operand precision of each dot product and convolution of a StableHLO module ->
  count; DEFAULT where the op states none."""
  found = [PRECISION.search(rest) for rest in PRODUCT.findall(module)]
  return dict(sorted(collections.Counter(m.group(1) if m else 'DEFAULT' for m in found).items()))


def _flops(exported: export.Exported) -> float:
  """XLA's cost analysis of the exported module, as jax.stages.Lowered.cost_analysis runs it."""
  return jax_private.hlo_flops(exported.mlir_module())


def _export(step, args, platform: str) -> export.Exported:
  return export.export(step, platforms=[platform], disabled_checks=CUDNN_CALLS)(*args)


def lower(
  config: ml_collections.ConfigDict, platform: str, *, batch_size: int | None = None
) -> dict:
  """Lowers config's train and eval steps for `platform` ('cuda' or 'tpu'); see the module doc."""
  if platform not in PLATFORMS:
    raise ValueError(f'--platform={platform!r} is not supported; choose one of {PLATFORMS}.')
  config = config.copy_and_resolve_references()
  if batch_size:
    config.batch_size = batch_size
  with jax_private.cudnn_version_for_tracing(ASSUMED_CUDNN_VERSION):
    with platforms.lowering_for(platform):
      result = dict(
        platform=platform,
        model=config.model.name,
        mask=config.model.mask.kind,
        dtype=compute_dtype(config.model.dtype),
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        devices=jax.device_count(),
      )
      exported = {
        name: _export(step, args, platform) for name, (step, args) in _steps(config).items()
      }
      opaque = False
      for name, module in exported.items():
        calls = collections.Counter(CUSTOM_CALL.findall(module.mlir_module()))
        opaque |= any(call.startswith('__cudnn$') for call in calls)
        result[name] = dict(
          stablehlo_bytes=len(module.mlir_module_serialized),
          custom_calls=dict(sorted(calls.items())),
          products=products(module.mlir_module()),
        )
      if opaque:
        config.model.attention.implementation = 'xla'
        exported = {
          name: _export(step, args, platform) for name, (step, args) in _steps(config).items()
        }
      for name, module in exported.items():
        result[name]['flops'] = _flops(module)
      result['flops_source'] = FLOPS_SOURCE + ('_with_xla_attention_for_cudnn' if opaque else '')
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # A CPU-only machine starts its CPU backend alone, without a notice of the TPU runtime
  # it has not got.
  console.quiet_jax()
  print(json.dumps(lower(FLAGS.config, FLAGS.platform, batch_size=FLAGS.batch_size)))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
  flags.DEFINE_enum('platform', None, PLATFORMS, 'The platform to lower for.')
  flags.DEFINE_integer('batch_size', None, "Global train batch (default: the config's).")
  flags.mark_flags_as_required(['config', 'platform'])
  FLAGS = flags.FLAGS
  cli.run_app(main)
