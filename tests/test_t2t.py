"""T2T-ViT: the reference's parameter counts, unfold order, sinusoids, skips, learning."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from configs import common, gmm_t2t_cifar10, t2t_cifar10
from gmm_vit_jax.attention.masks import GaussianMixtureMask
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.t2t import TokenTransformer, sinusoid_position_embedding, unfold
from tests.model_testing import count_params, random_batch, train_losses

pytestmark = pytest.mark.usefixtures('quick_compiles')


@functools.cache
def tiny_model(mask_kind: str, num_token_layers: int = 1):
  """16x16 images: 8x8 tokens in the token transformer, a 4x4 grid in two encoder layers."""
  config = t2t_cifar10.model(mask_kind, 'cifar10')
  config.update(num_token_layers=num_token_layers, token_dim=4, embed_dim=16, depth=2, num_heads=2)
  return build_model(config, num_classes=10, image_size=16, channels=3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  'get_config, expected',
  [
    (t2t_cifar10.get_config, 6_486_080),
    (gmm_t2t_cifar10.get_config, 6_486_570),
  ],
)
def test_parameter_count_matches_reference(get_config, expected):
  config = get_config()
  model = nnx.eval_shape(
    lambda: build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  )
  assert count_params(model) == expected
  assert model.tokens_to_token.sides == (16, 8)
  np.testing.assert_allclose([b.drop_path_rate for b in model.blocks], np.linspace(0, 0.1, 12))
  gmm = config.model.mask.kind == 'gmm'
  assert isinstance(model.tokens_to_token.layers[0].attention.mask, GaussianMixtureMask) == gmm


def test_tiny_imagenet_adds_a_token_transformer():
  config = t2t_cifar10.get_config(common.TINY_IMAGENET)
  model = nnx.eval_shape(
    lambda: build_model(config.model, num_classes=200, image_size=64, channels=3, rngs=nnx.Rngs(0))
  )
  assert model.tokens_to_token.sides == (32, 16, 8)
  assert model.side == 8


def numpy_unfold(x_nchw, k=3, s=2, p=1):
  """torch.nn.Unfold(k, stride=s, padding=p)(x).transpose(1, 2), written out in loops."""
  b, c, h, w = x_nchw.shape
  xp = np.pad(x_nchw, ((0, 0), (0, 0), (p, p), (p, p)))
  oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  out = np.zeros((b, c * k * k, oh * ow), x_nchw.dtype)
  for ci in range(c):
    for ki in range(k):
      for kj in range(k):
        for oy in range(oh):
          for ox in range(ow):
            out[:, ci * k * k + ki * k + kj, oy * ow + ox] = xp[:, ci, oy * s + ki, ox * s + kj]
  return out.transpose(0, 2, 1)


@pytest.mark.parametrize('shape', [(2, 6, 6, 3), (1, 5, 7, 2)])
def test_unfold_matches_torch_order(shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  np.testing.assert_array_equal(jax.jit(unfold)(x), numpy_unfold(x.transpose(0, 3, 1, 2)))


def test_sinusoid_position_embedding():
  n, d = 7, 10
  expected = [
    [
      math.sin(p / 10000 ** (2 * (j // 2) / d))
      if j % 2 == 0
      else math.cos(p / 10000 ** (2 * (j // 2) / d))
      for j in range(d)
    ]
    for p in range(n)
  ]
  np.testing.assert_allclose(sinusoid_position_embedding(n, d), expected, rtol=1e-6, atol=1e-7)


def layer_norm(x, norm):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * weights(norm.scale) + weights(norm.bias)


def weights(param):
  return np.asarray(param[...], np.float64)


def linear(x, layer):
  out = x @ weights(layer.kernel)
  return out + weights(layer.bias) if layer.bias is not None else out


def numpy_attention(x, attention, heads, scale):
  """Multi-head softmax attention in float64, output projection included, no skip."""
  q, k, v = (linear(x, attention.query), linear(x, attention.score.key), linear(x, attention.value))
  d = q.shape[-1] // heads
  out = np.zeros_like(q)
  for h in range(heads):
    sl = slice(h * d, (h + 1) * d)
    s = np.einsum('bid,bjd->bij', q[..., sl], k[..., sl]) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    out[..., sl] = (p / p.sum(-1, keepdims=True)) @ v[..., sl]
  return linear(out, attention.out), v


def test_token_transformer_matches_numpy():
  """One head, scale 1/sqrt(input width), V as the attention's skip, then x + mlp(norm(x))."""
  config = t2t_cifar10.model('none', 'cifar10')
  layer = TokenTransformer(
    27, 8, side=4, attention=config.attention, mask=config.mask, dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  x = np.random.default_rng(0).normal(size=(2, 16, 27))
  coords = np.zeros((16, 2), np.int32)
  out = nnx.jit(lambda m, t, c: m(t, c))(layer, x.astype(np.float32), coords)

  attended, v = numpy_attention(layer_norm(x, layer.norm1), layer.attention, 1, 27**-0.5)
  x = attended + v
  h = linear(layer_norm(x, layer.norm2), layer.mlp.fc1)
  expected = x + linear(0.5 * h * (1 + erf(h / np.sqrt(2))), layer.mlp.fc2)
  assert out.shape == (2, 16, 8)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_encoder_attention_adds_its_input():
  """The reference's encoder attention returns proj(attention) + its (normalised) input."""
  attention = tiny_model('none').blocks[0].attention
  x = np.random.default_rng(1).normal(size=(2, 16, 16))
  coords = np.zeros((16, 2), np.int32)
  out = nnx.jit(lambda a, t, c: a(t, c))(attention, x.astype(np.float32), coords)
  attended, _ = numpy_attention(x, attention, 2, 8**-0.5)
  np.testing.assert_allclose(out, attended + x, rtol=1e-4, atol=1e-5)


def test_kernels_are_drawn_with_std_002():
  kernels = [
    np.ravel(m.kernel[...])
    for _, m in nnx.iter_modules(tiny_model('none'))
    if isinstance(m, nnx.Linear)
  ]
  np.testing.assert_allclose(np.std(np.concatenate(kernels)), 0.02, rtol=0.1)


@pytest.mark.parametrize('mask_kind, num_token_layers', [('none', 1), ('gmm', 1), ('elm', 2)])
def test_forward_shape(mask_kind, num_token_layers):
  model = tiny_model(mask_kind, num_token_layers)
  images, _ = random_batch(2, 16)
  logits = nnx.jit(lambda m, x: m(x))(model, images)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))


def test_token_index_is_refused():
  images, _ = random_batch(2, 16)
  with pytest.raises(ValueError, match='cannot drop tokens'):
    tiny_model('none')(images, token_index=jnp.zeros((2, 4), jnp.int32))


def test_a_few_steps_lower_the_loss():
  images, labels = random_batch(8, 16)
  losses = train_losses(tiny_model('gmm'), images, labels, steps=10, learning_rate=3e-3)
  assert losses[-1] < losses[0]
