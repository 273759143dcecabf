"""Every use of JAX's private modules (jax._src), in one place.

The cross-platform lowering (gmm_vit_jax/lower.py) needs three things JAX keeps private:
the cuDNN attention rule's custom-call names and its cuDNN version query, and XLA's HLO
cost analysis through the backend bridge. Private modules move between JAX releases
without notice; `missing()` lists what this JAX lacks, and using any of it on such a JAX
raises JaxPrivateError naming the version (tests/test_jax_private.py checks each upgrade).
"""

import contextlib
import importlib
from collections.abc import Callable, Iterator

import jax

from gmm_vit_jax import errors

# (module, attribute) pairs the functions below use.
REQUIRED = (
  ('jax._src.cudnn.fused_attention_stablehlo', '_custom_name_maps'),
  ('jax._src.cudnn.fused_attention_stablehlo', 'check_cudnn_version'),
  ('jax._src.lib', 'cuda_versions'),
  ('jax._src.lib', '_jax.mlir.mlir_module_to_xla_computation'),
  ('jax._src.lib', '_jax.hlo_module_cost_analysis'),
  ('jax._src.xla_bridge', 'get_backend'),
)


class JaxPrivateError(errors.UserError, ImportError):
  """This JAX moved a private API gmm_vit_jax relies on."""


def _lookup(module: str, attribute: str):
  """module.attribute (attribute may be dotted); ImportError or AttributeError when absent."""
  value = importlib.import_module(module)
  for name in attribute.split('.'):
    value = getattr(value, name)
  return value


def missing() -> list[str]:
  """The private names this JAX lacks, as 'module.attribute'; empty when all are there."""
  absent = []
  for module, attribute in REQUIRED:
    try:
      _lookup(module, attribute)
    except (ImportError, AttributeError):
      absent.append(f'{module}.{attribute}')
  return absent


def describe(absent: list[str]) -> str:
  return (
    f'JAX {jax.__version__} lacks private APIs that gmm_vit_jax/jax_private.py uses: '
    f'{", ".join(absent)}. Install the JAX that requirements.txt names, or update '
    'gmm_vit_jax/jax_private.py for this one.'
  )


def _private(module: str, attribute: str):
  try:
    return _lookup(module, attribute)
  except (ImportError, AttributeError) as e:
    raise JaxPrivateError(describe([f'{module}.{attribute}'])) from e


def cudnn_attention_call_targets() -> tuple[str, ...]:
  """The custom-call names of jax.nn.dot_product_attention's cuDNN implementation."""
  names = _private('jax._src.cudnn.fused_attention_stablehlo', '_custom_name_maps')
  return tuple(sorted(set(names.values())))


@contextlib.contextmanager
def cudnn_version_for_tracing(version: int) -> Iterator[None]:
  """Inside, tracing the cuDNN attention rule without a CUDA jaxlib sees cuDNN `version`
  (the rule asks the installed cuDNN while tracing); with CUDA installed, its own."""
  rule = _private('jax._src.cudnn.fused_attention_stablehlo', 'check_cudnn_version')
  cuda = _private('jax._src.lib', 'cuda_versions')
  module = importlib.import_module('jax._src.cudnn.fused_attention_stablehlo')
  stated: Callable[[], int] = rule if cuda is not None else (lambda: version)
  module.check_cudnn_version = stated
  try:
    yield
  finally:
    module.check_cudnn_version = rule


def hlo_flops(mlir_module: str) -> float:
  """XLA's HLO cost analysis (FLOPs) of a StableHLO module, as jax.stages.Lowered.cost_analysis
  computes it, on this process's default backend."""
  to_computation = _private('jax._src.lib', '_jax.mlir.mlir_module_to_xla_computation')
  cost_analysis = _private('jax._src.lib', '_jax.hlo_module_cost_analysis')
  backend = _private('jax._src.xla_bridge', 'get_backend')()
  computation = to_computation(mlir_module, use_tuple_args=False)
  return float(cost_analysis(backend, computation.as_hlo_module())['flops'])
