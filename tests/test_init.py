"""Initial q/k/v projections: each backbone's reference initialisation, fused where it fuses."""

import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax.attention import Attention
from gmm_vit_jax.models import build_from_config
from tests.model_testing import TINY_CONFIGS


def xavier_std(fan_in: int, fan_out: int) -> float:
  return float(np.sqrt(2.0 / (fan_in + fan_out)))


def expected_stds(name: str, dim: int, inner: int) -> dict[str, float]:
  """std of the query, key and value kernels of one (dim -> inner) attention layer, as drawn
  by the reference: Xavier-normal over its fused to_qkv (ViT, PiT) or to_kv (CaiT, whose
  to_q is its own Linear); PyTorch's default uniform(+-1/sqrt(dim)) for Swin; N(0, 0.02)
  for T2T and HAT-Net."""
  if name in ('vit', 'pit'):
    std = xavier_std(dim, 3 * inner)
    return dict(query=std, key=std, value=std)
  if name == 'cait':
    kv = xavier_std(dim, 2 * inner)
    return dict(query=xavier_std(dim, inner), key=kv, value=kv)
  std = 1.0 / np.sqrt(3.0 * dim) if name == 'swin' else 0.02
  return dict(query=std, key=std, value=std)


def projection_kernels(attention: Attention) -> dict[str, np.ndarray]:
  return dict(
    query=np.asarray(attention.query.kernel[...]),
    key=np.asarray(attention.score.key.kernel[...]),
    value=np.asarray(attention.value.kernel[...]),
  )


@pytest.mark.parametrize('name', sorted(TINY_CONFIGS))
def test_projection_std_matches_the_reference(name):
  config = TINY_CONFIGS[name]('gmm')
  config.model.dtype = 'float32'
  model = build_from_config(config)
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, Attention)]
  assert layers
  # Each kernel divided by the std the reference draws it with: all together ~ N(0, 1).
  scaled = []
  for attention in layers:
    kernels = projection_kernels(attention)
    dim, inner = kernels['query'].shape
    stds = expected_stds(name, dim, inner)
    scaled += [(kernels[part] / stds[part]).ravel() for part in kernels]
  scaled = np.concatenate(scaled)
  # The sample std of n standard normals has sd 1/sqrt(2n): 4 of those is the tolerance,
  # well inside the factor sqrt(2) that drawing ViT's parts unfused would give.
  tolerance = 4.0 / np.sqrt(2 * scaled.size)
  assert tolerance < 0.1
  np.testing.assert_allclose(np.std(scaled), 1.0, atol=tolerance)
  np.testing.assert_allclose(np.mean(scaled), 0.0, atol=tolerance)
