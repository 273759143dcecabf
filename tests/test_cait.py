"""CaiT: parameter counts, LayerScale and stochastic depth, and the forward pass against NumPy."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import cait_cifar10, common, gmm_cait_cifar10
from gmm_vit_jax.attention import ElementwiseMask, GaussianMixtureMask
from gmm_vit_jax.models import build_model
from gmm_vit_jax.models.cait import layer_scale_init
from tests.model_testing import count_params, random_batch, train_losses

# Trainable parameters of the reference code at 32x32, 10 classes, K=5, counted by building
# its models.
# Its README's 5.1M does not match the code.
REFERENCE_PLAIN = 9_020_618
REFERENCE_GMM = 9_021_578


pytestmark = pytest.mark.usefixtures('quick_compiles')


def full_model(kind: str):
  """The paper's CaiT at 32x32 (built eagerly: cheaper than tracing its 26 layers)."""
  config = cait_cifar10.get_config()
  config.model.mask.kind = kind
  return build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))


def tiny_config(kind: str) -> ml_collections.ConfigDict:
  """8x8 images, patch 2: 16 patch tokens, 2 patch layers, 2 class layers."""
  return ml_collections.ConfigDict(
    dict(
      name='cait',
      patch_size=2,
      dim=8,
      depth=2,
      class_depth=2,
      num_heads=2,
      head_dim=4,
      mlp_dim=16,
      dropout=0.0,
      emb_dropout=0.0,
      stochastic_depth=0.1,
      dtype='float32',
      attention=common.attention(),
      mask=common.mask(kind),
    )
  )


def tiny_model(kind: str):
  return build_model(tiny_config(kind), num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def gmm():
  return full_model('gmm')


def test_parameter_counts_match_reference(gmm):
  assert count_params(full_model('none')) == REFERENCE_PLAIN
  assert count_params(gmm) == REFERENCE_GMM
  # ELM: one (64, 64) matrix per patch layer, 24 layers.
  assert count_params(full_model('elm')) == REFERENCE_PLAIN + 24 * 64 * 64


def test_stochastic_depth_and_mask_placement(gmm):
  layers = list(gmm.patch_layers) + list(gmm.class_layers)
  assert len(gmm.patch_layers) == 24 and len(gmm.class_layers) == 2
  # Stochastic depth: the same rate in every layer.
  assert {layer.drop_path_rate for layer in layers} == {0.1}
  assert all(isinstance(layer.attention.mask, GaussianMixtureMask) for layer in gmm.patch_layers)
  assert all(layer.attention.mask is None for layer in gmm.class_layers)


def test_layer_scale_values(gmm):
  # The CaiT paper's rule by depth, counted from 1 in each of the two transformers.
  assert [layer_scale_init(i) for i in range(1, 27)] == [0.1] * 18 + [1e-5] * 6 + [1e-6] * 2
  expected = [0.1] * 18 + [1e-5] * 6 + [0.1] * 2
  for layer, value in zip(list(gmm.patch_layers) + list(gmm.class_layers), expected):
    for scale in (layer.attention_scale, layer.mlp_scale):
      np.testing.assert_array_equal(np.asarray(scale[...]), np.full(192, value, np.float32))


def test_configs():
  gmm = gmm_cait_cifar10.get_config('svhn_cropped')
  assert gmm.model.mask.kind == 'gmm' and gmm.dataset.name == 'svhn_cropped'
  assert not gmm.model.attention.qkv_bias
  assert cait_cifar10.get_config().model.patch_size == 4
  # 64x64 images: double patch, same 8x8 token grid.
  assert cait_cifar10.get_config('tiny_imagenet').model.patch_size == 8


def test_training_lowers_loss():
  images, labels = random_batch(8, 8)
  losses = train_losses(tiny_model('gmm'), images, labels, steps=12, learning_rate=3e-3)
  assert losses[-1] < losses[0]


def arr(x):
  return np.asarray(x[...], np.float64)


def np_layer_norm(x, norm):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * arr(norm.scale) + arr(norm.bias)


def np_mlp(x, mlp):
  h = x @ arr(mlp.fc1.kernel) + arr(mlp.fc1.bias)
  h = 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))
  return h @ arr(mlp.fc2.kernel) + arr(mlp.fc2.bias)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_multiplier(mask, coords, keep):
  """The mask's (H or 1, N, N) multiplier for the kept tokens; None without a mask."""
  if mask is None:
    return None
  if isinstance(mask, ElementwiseMask):
    return arr(mask.weight)[np.ix_(keep, keep)][None]
  n = len(coords)
  sq = np.array([[float(np.sum((coords[i] - coords[j]) ** 2)) for j in range(n)] for i in range(n)])
  sigma, alpha = arr(mask.sigma), arr(mask.alpha)
  return np.einsum(
    'kh,khij->hij', alpha, np.exp(-sq[None, None] / (2 * (sigma[..., None, None] ** 2 + 1e-5)))
  )


def np_talking_heads_attention(xq, xkv, attention, multiplier, heads):
  """Queries from xq (B, N, C), keys/values from xkv (B, M, C); mask multiplier or None."""
  b, n, _ = xq.shape
  m = xkv.shape[1]
  q = (xq @ arr(attention.query.kernel)).reshape(b, n, heads, -1)
  k = (xkv @ arr(attention.score.key.kernel)).reshape(b, m, heads, -1)
  v = (xkv @ arr(attention.value.kernel)).reshape(b, m, heads, -1)
  logits = np.einsum('bihd,bjhd->bhij', q, k) / np.sqrt(q.shape[-1])
  if multiplier is not None:
    logits = logits * multiplier[None]
  logits = np.einsum('bhij,hg->bgij', logits, arr(attention.pre_softmax.kernel))
  weights = np.einsum('bhij,hg->bgij', np_softmax(logits), arr(attention.post_softmax.kernel))
  out = np.einsum('bhij,bjhd->bihd', weights, v).reshape(b, n, -1)
  return out @ arr(attention.out.kernel) + arr(attention.out.bias)


def np_cait(model, images, keep, *, patch, heads):
  """The tiny CaiT forward pass in NumPy, keeping the patches `keep` (row-major indices)."""
  b, h, w, _ = images.shape
  side = w // patch
  patches = np.stack(
    [
      np.stack(
        [
          images[i, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].reshape(-1)
          for r in range(h // patch)
          for c in range(side)
        ]
      )
      for i in range(b)
    ]
  )[:, keep]
  coords = np.array([(t // side, t % side) for t in keep])
  x = patches @ arr(model.patch_embed.kernel) + arr(model.patch_embed.bias)
  x = x + arr(model.pos_embed)[keep]
  for layer in model.patch_layers:
    multiplier = np_multiplier(layer.attention.mask, coords, keep)
    y = np_layer_norm(x, layer.norm1)
    x = x + arr(layer.attention_scale) * np_talking_heads_attention(
      y, y, layer.attention, multiplier, heads
    )
    x = x + arr(layer.mlp_scale) * np_mlp(np_layer_norm(x, layer.norm2), layer.mlp)
  cls = np.broadcast_to(arr(model.cls_token), (b, 1, x.shape[-1]))
  for layer in model.class_layers:
    y = np_layer_norm(cls, layer.norm1)
    cls = cls + arr(layer.attention_scale) * np_talking_heads_attention(
      y, x, layer.attention, None, heads
    )
    cls = cls + arr(layer.mlp_scale) * np_mlp(np_layer_norm(cls, layer.norm2), layer.mlp)
  return np_layer_norm(cls[:, 0], model.norm) @ arr(model.head.kernel) + arr(model.head.bias)


def randomise(model, seed):
  """Sizeable, varied values for everything a misplaced term would show in."""
  rng = np.random.default_rng(seed)
  for layer in list(model.patch_layers) + list(model.class_layers):
    for scale in (layer.attention_scale, layer.mlp_scale):
      scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, scale.shape), jnp.float32)
    for norm in (layer.norm1, layer.norm2):
      norm.bias[...] = jnp.asarray(rng.normal(size=norm.bias.shape), jnp.float32)
    layer.attention.out.bias[...] = jnp.asarray(
      rng.normal(size=layer.attention.out.bias.shape), jnp.float32
    )
    mask = layer.attention.mask
    if isinstance(mask, GaussianMixtureMask):
      mask.sigma[...] = jnp.asarray(rng.uniform(0.5, 2.0, mask.sigma.shape), jnp.float32)
    elif mask is not None:
      mask.weight[...] = jnp.asarray(rng.normal(size=mask.weight.shape), jnp.float32)


@pytest.mark.parametrize('kind', ['none', 'gmm', 'elm'])
def test_forward_matches_numpy(kind):
  model = tiny_model(kind)
  randomise(model, seed=1)
  images, _ = random_batch(2, 8, seed=2)
  keep = np.array([0, 3, 5, 6, 9, 10, 12, 15])
  rng = np.random.default_rng(3)
  permutation = np.stack([rng.permutation(16) for _ in range(2)])
  forward = nnx.jit(lambda m, x, k, p: (m(x), m(x, token_index=k), m(x, token_index=p)))
  full, kept, permuted = forward(
    model, images, jnp.asarray(np.stack([keep, keep])), jnp.asarray(permutation)
  )
  assert full.shape == (2, 10)
  images = np.asarray(images, np.float64)
  np.testing.assert_allclose(
    np.asarray(full), np_cait(model, images, np.arange(16), patch=2, heads=2), rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    np.asarray(kept), np_cait(model, images, keep, patch=2, heads=2), rtol=1e-4, atol=1e-4
  )
  # Positions and mask coordinates travel with their tokens: the order does not matter.
  np.testing.assert_allclose(np.asarray(permuted), np.asarray(full), rtol=1e-4, atol=1e-5)
