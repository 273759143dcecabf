"""The private JAX APIs of gmm_vit_jax/jax_private.py exist in the installed JAX."""

import jax
import pytest

from gmm_vit_jax import jax_private


def test_installed_jax_has_every_private_api():
  absent = jax_private.missing()
  assert not absent, jax_private.describe(absent)


def test_a_moved_api_is_named_with_the_jax_version(monkeypatch):
  monkeypatch.setattr(
    jax_private, 'REQUIRED', jax_private.REQUIRED + (('jax._src.cudnn', 'moved_away'),)
  )
  absent = jax_private.missing()
  assert absent == ['jax._src.cudnn.moved_away']
  message = jax_private.describe(absent)
  assert f'JAX {jax.__version__} lacks' in message and 'jax._src.cudnn.moved_away' in message
  with pytest.raises(jax_private.JaxPrivateError, match=f'JAX {jax.__version__}'):
    jax_private._private('jax._src.no_such_module', 'anything')


def test_cudnn_call_targets_and_version_for_tracing():
  targets = jax_private.cudnn_attention_call_targets()
  assert targets and all(name.startswith('__cudnn$') for name in targets)
  module = __import__('jax._src.cudnn.fused_attention_stablehlo', fromlist=['_'])
  rule = module.check_cudnn_version
  with jax_private.cudnn_version_for_tracing(91000):
    if jax_private._private('jax._src.lib', 'cuda_versions') is None:
      assert module.check_cudnn_version() == 91000
  assert module.check_cudnn_version is rule


def test_hlo_flops_of_a_matmul():
  n = 16
  exported = jax.export.export(jax.jit(lambda a, b: a @ b))(
    jax.ShapeDtypeStruct((n, n), 'float32'), jax.ShapeDtypeStruct((n, n), 'float32')
  )
  assert jax_private.hlo_flops(exported.mlir_module()) == 2 * n**3
