"""Mixture-of-Gaussian-keys scores against a NumPy evaluation of the MGK formula.

Nguyen et al., 'Improving Transformers with Probabilistic Attention Keys', ICML 2022.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import common, gmm_hvit_cifar10, vit_cifar10
from gmm_vit_jax.attention import grid, make_score
from gmm_vit_jax.attention.attention import Attention
from gmm_vit_jax.attention.masks import ElementwiseMask, GaussianMixtureMask
from gmm_vit_jax.attention.mixture_keys import MixingWeights, MixtureOfKeysScore
from gmm_vit_jax.attention.scores import DotProductScore
from gmm_vit_jax.models import build_model
from tests import model_testing

pytestmark = pytest.mark.usefixtures('quick_compiles')

DIM, HEADS, HEAD_DIM, SIDE = 8, 2, 4, 3
N = SIDE * SIDE


def np_softmax(z, axis=-1):
  z = z - z.max(axis=axis, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=axis, keepdims=True)


def np_logsumexp(z, axis):
  top = z.max(axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.exp(z - top).sum(axis=axis))


def np_heads(t):
  """(B, N, H*D) -> (B, H, N, D)."""
  b, n, _ = t.shape
  return t.reshape(b, n, HEADS, -1).transpose(0, 2, 1, 3)


def np_gmm_values(coords, sigma, alpha):
  """The GMM paper's mask (docs/design.md): sum_k alpha exp(-d2 / (2 (sigma^2 + 1e-5))), zero
  from d2 = 104."""
  c = coords.astype(np.float64)
  d2 = ((c[..., :, None, :] - c[..., None, :, :]) ** 2).sum(-1)
  kern = np.exp(-d2[..., None, None, :, :] / (2 * (sigma[:, :, None, None] ** 2 + 1e-5)))
  kern = np.where(d2[..., None, None, :, :] < 104, kern, 0.0)
  g = (alpha[:, :, None, None] * kern).sum(axis=-4)
  return g if g.ndim == 4 else g[None]


class Reference:
  """The MGK formula, with |q_i|^2 kept, from the modules' own weights."""

  def __init__(self, attn: Attention):
    score = attn.score
    self.wq = np.asarray(attn.query.kernel[...], np.float64)
    if score.variant == 'mgk':
      self.wk = [np.asarray(k.kernel[...], np.float64) for k in score.key]
      self.shift = None
    else:
      self.wk = [np.asarray(score.key.kernel[...], np.float64)]
      self.shift = np.asarray(score.shift[...], np.float64)  # (H, M, D)
    if score.pi_kind == 'learned':
      self.log_pi = np.log(np_softmax(np.asarray(score.pi_logits[...], np.float64), axis=1))
    elif score.pi_kind == 'e_step':
      self.log_pi = np.log(np.asarray(score.pi[...], np.float64))  # (H, M) or (H, M, P)
    else:
      self.log_pi = np.zeros((HEADS, score.num_keys))  # pi_jr = 1: no mixing weights
    m = score.num_keys
    self.var = (
      np.exp(np.asarray(score.log_var[...], np.float64))
      if score.log_var is not None
      else np.full((HEADS, m), np.sqrt(HEAD_DIM))
    )
    self.hard = score.e_step == 'hard'
    self.width = None if score.grid_shape is None else score.grid_shape[1]

  def terms(self, x, coords):
    """log pi_jr - |q_i - k_jr|^2 / (2 s_r^2): (B, H, M, I, J); and q (B, H, I, D)."""
    x = np.asarray(x, np.float64)
    q = np_heads(x @ self.wq)  # (B, H, N, D)
    if self.shift is None:
      k = np.stack([np_heads(x @ w) for w in self.wk], axis=2)  # (B, H, M, N, D)
    else:
      k = np_heads(x @ self.wk[0])[:, :, None] + self.shift[None, :, :, None, :]
    sq = ((q[:, :, None, :, None, :] - k[:, :, :, None, :, :]) ** 2).sum(-1)  # (B,H,M,I,J)
    log_pi = self.log_pi
    if log_pi.ndim == 2:
      log_pi = log_pi[None, :, :, None, None]
    else:
      c = np.asarray(coords)
      slot = np.where((c >= 0).all(-1), c[..., 0] * self.width + c[..., 1], log_pi.shape[-1] - 1)
      slot = np.broadcast_to(slot, (x.shape[0], x.shape[1]))
      log_pi = np.stack([log_pi[:, :, s] for s in slot])[:, :, :, None, :]
    return log_pi - sq / (2 * self.var[None, :, :, None, None]), q

  def log_scores(self, x, coords):
    """L_ij = log sum_r pi_jr exp(-|q_i - k_jr|^2 / (2 s_r^2)) (max for the hard E-step)."""
    terms, q = self.terms(x, coords)
    scores = terms.max(axis=2) if self.hard else np_logsumexp(terms, axis=2)
    return scores, q

  def e_step(self, x, coords):
    """The paper's soft E-step, written out: the new pi from this batch's responsibilities.

    gamma_bhrij = pi_jr N_r(q_i | k_jr) / sum_r' pi_jr' N_r'(q_i | k_jr'); pi per head is
    gamma's mean over b, i and j; per position, the mean over b and i of the keys in that
    position's slot, the old pi where no key of the batch sits.
    """
    terms, _ = self.terms(x, coords)
    gamma = np.exp(terms)
    gamma = gamma / gamma.sum(axis=2, keepdims=True)
    old = np.exp(self.log_pi)
    if old.ndim == 2:
      return gamma.mean(axis=(0, 3, 4))
    c = np.broadcast_to(np.asarray(coords), (x.shape[0], x.shape[1], 2))
    slot = np.where((c >= 0).all(-1), c[..., 0] * self.width + c[..., 1], old.shape[-1] - 1)
    new = old.copy()
    for p in range(old.shape[-1]):
      b, j = np.nonzero(slot == p)
      if b.size:
        new[:, :, p] = np.mean(
          [gamma[bb, :, :, :, jj].mean(axis=-1) for bb, jj in zip(b, j)], axis=0
        )
    return new

  def dropped_query_term(self, q):
    """|q_i|^2 / 2 * mean_r 1 / s_r^2, the per-query constant the module leaves out."""
    mean_inv_var = (1.0 / self.var).mean(axis=1)
    return 0.5 * (q**2).sum(-1) * mean_inv_var[None, :, None]


def make_attention_layer(
  *,
  variant='mgk',
  e_step='soft',
  pi='learned',
  pi_scope='head',
  learn_variance=False,
  num_keys=2,
  mask=None,
  seed=0,
):
  rngs = nnx.Rngs(seed)
  score = MixtureOfKeysScore(
    DIM,
    num_heads=HEADS,
    head_dim=HEAD_DIM,
    num_keys=num_keys,
    variant=variant,
    e_step=e_step,
    pi=pi,
    pi_scope=pi_scope,
    learn_variance=learn_variance,
    use_bias=False,
    grid_shape=(SIDE, SIDE),
    rngs=rngs,
  )
  # Values away from their initial ones, so every parameter and state matters.
  rng = np.random.default_rng(seed)
  if pi == 'learned':
    score.pi_logits[...] = jnp.asarray(rng.normal(size=score.pi_logits.shape), jnp.float32)
  elif pi == 'e_step':
    weights = rng.dirichlet(np.ones(num_keys), size=score.pi.shape[:1] + score.pi.shape[2:])
    score.pi[...] = jnp.asarray(np.moveaxis(weights, -1, 1), jnp.float32)
  if learn_variance:
    score.log_var[...] = jnp.asarray(rng.normal(0.7, 0.5, score.log_var.shape), jnp.float32)
  if variant == 'smgk':
    score.shift[...] = jnp.asarray(rng.normal(0, 0.5, score.shift.shape), jnp.float32)
  return Attention(DIM, num_heads=HEADS, head_dim=HEAD_DIM, score=score, mask=mask, rngs=rngs)


def tokens(batch=2, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, N, DIM)), jnp.float32)


# (e_step, pi): the paper's soft and hard E-steps, SGD-learned pi with either, no pi summed.
MIXINGS = [
  ('soft', 'e_step'),
  ('hard', 'none'),
  ('soft', 'learned'),
  ('hard', 'learned'),
  ('soft', 'none'),
]


@pytest.mark.parametrize('variant', ['mgk', 'smgk'])
@pytest.mark.parametrize('e_step,pi', MIXINGS)
@pytest.mark.parametrize('pi_scope', ['head', 'position'])
@pytest.mark.parametrize('learn_variance', [False, True])
def test_weights_match_the_mgk_formula(variant, e_step, pi, pi_scope, learn_variance):
  if pi == 'none' and pi_scope == 'position':
    pytest.skip('no mixing weights to place per position')
  attn = make_attention_layer(
    variant=variant, e_step=e_step, pi=pi, pi_scope=pi_scope, learn_variance=learn_variance
  )
  x = tokens()
  coords = grid.grid_coords(SIDE, SIDE)
  got = attn.attention_weights(x, jnp.asarray(coords))
  scores, _ = Reference(attn).log_scores(x, coords)
  np.testing.assert_allclose(got, np_softmax(scores), rtol=1e-4, atol=1e-6)


def kept_coords():
  """Two examples keeping different cells of the 3x3 grid, behind one off-grid CLS token."""
  full = grid.grid_coords(SIDE, SIDE)
  kept = np.stack([full[[0, 2, 4, 7, 8]], full[[1, 3, 4, 6, 8]]])  # (B, K, 2)
  return np.asarray(grid.with_leading_tokens(jnp.asarray(kept)))


@pytest.mark.parametrize('pi', ['learned', 'e_step'])
def test_per_position_pi_follows_kept_tokens_and_cls(pi):
  """After selection each key keeps its cell's weights; off-grid tokens share the last slot."""
  attn = make_attention_layer(pi=pi, pi_scope='position', num_keys=3)
  coords = kept_coords()
  x = tokens()[:, : coords.shape[1]]
  got = attn.attention_weights(x, jnp.asarray(coords))
  scores, _ = Reference(attn).log_scores(x, coords)
  np.testing.assert_allclose(got, np_softmax(scores), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  'pi_scope,kept', [('head', False), ('position', False), ('position', True)]
)
@pytest.mark.parametrize('learn_variance', [False, True])
def test_one_e_step_against_numpy(pi_scope, kept, learn_variance):
  """A training forward pass sets pi to the batch's mean responsibilities, computed with
  the pi it had; its own weights use that old pi; evaluation leaves pi as it is."""
  attn = make_attention_layer(
    variant='smgk', pi='e_step', pi_scope=pi_scope, learn_variance=learn_variance, num_keys=3
  )
  coords = kept_coords() if kept else grid.grid_coords(SIDE, SIDE)
  x = tokens()[:, : coords.shape[-2]]
  ref = Reference(attn)
  expected_pi = ref.e_step(x, coords)
  old_pi = np.asarray(attn.score.pi[...])
  np.testing.assert_allclose(
    attn.attention_weights(x, jnp.asarray(coords)),
    np_softmax(ref.log_scores(x, coords)[0]),
    rtol=1e-4,
    atol=1e-6,
  )
  np.testing.assert_array_equal(attn.score.pi[...], old_pi)
  got = attn.attention_weights(x, jnp.asarray(coords), training=True)
  np.testing.assert_allclose(got, np_softmax(ref.log_scores(x, coords)[0]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(attn.score.pi[...], expected_pi, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sum(attn.score.pi[...], axis=1), 1.0, rtol=1e-5)
  assert np.abs(expected_pi - old_pi).max() > 1e-2
  if kept:
    # Cell 5 of the grid is kept by neither example: its weights stay.
    np.testing.assert_array_equal(attn.score.pi[..., 5], old_pi[..., 5])


def test_e_step_pi_is_state_not_a_parameter():
  attn = make_attention_layer(pi='e_step')
  assert 'pi' not in nnx.state(attn, nnx.Param)['score']
  assert 'pi' in nnx.state(attn, MixingWeights)['score']
  learned = make_attention_layer(pi='learned')
  assert 'pi_logits' in nnx.state(learned, nnx.Param)['score']
  assert not jax.tree.leaves(
    nnx.state(make_attention_layer(e_step='hard', pi='none'), MixingWeights)
  )


def test_e_step_in_the_jitted_train_step():
  """pi leaves the train step in the new state's buffers; the parameters never hold it."""
  from configs import quickstart_hvit
  from gmm_vit_jax import sharding
  from gmm_vit_jax.data.info import dataset_info
  from gmm_vit_jax.models import build_from_config
  from gmm_vit_jax.training.optimizer import make_optimizer
  from gmm_vit_jax.training.state import Metrics, TrainState
  from gmm_vit_jax.training.step import make_train_step

  config = quickstart_hvit.get_config()
  config.model.update(dict(dim=16, depth=1, num_heads=2, head_dim=8))
  tx = make_optimizer(config, 10)
  graphdef, params, buffers = nnx.split(build_from_config(config), nnx.Param, ...)
  params, buffers = nnx.to_pure_dict(params), nnx.to_pure_dict(buffers)
  before = np.asarray(buffers['blocks'][0]['attention']['score']['pi'])
  # The default pi_scope='position': (heads, keys, 4x4 cells + the off-grid slot).
  assert before.shape == (2, 2, 17)
  assert 'pi' not in params['blocks'][0]['attention']['score']
  state = TrainState(step=np.int32(0), params=params, buffers=buffers, opt_state=tx.init(params))
  step = make_train_step(
    graphdef,
    tx,
    config,
    dataset_info('digits'),
    out_sharding=sharding.replicated(sharding.make_mesh()),
    donate=False,
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  for select in (False, True):
    new, _ = step(state, Metrics.zeros(), images, labels, np.arange(32, dtype=np.int32), select)
    after = np.asarray(new.buffers['blocks'][0]['attention']['score']['pi'])
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('mode', ['multiply', 'add'])
@pytest.mark.parametrize('learn_variance', [False, True])
def test_gmm_mask_on_log_scores(mode, learn_variance):
  mask = GaussianMixtureMask(HEADS, num_kernels=3, mode=mode, rngs=nnx.Rngs(5))
  attn = make_attention_layer(variant='smgk', mask=mask, learn_variance=learn_variance)
  x = tokens()
  coords = grid.grid_coords(SIDE, SIDE)
  ref = Reference(attn)
  scores, q = ref.log_scores(x, coords)
  g = np_gmm_values(
    coords, np.asarray(mask.sigma[...], np.float64), np.asarray(mask.alpha[...], np.float64)
  )
  if mode == 'add':
    # An additive mask leaves the softmax invariant to per-query constants.
    expected = np_softmax(scores + g)
  else:
    # A multiplicative mask scales the score the module defines: the log numerator
    # plus the per-query term it leaves out.
    expected = np_softmax((scores + ref.dropped_query_term(q)[..., None]) * g)
  got = attn.attention_weights(x, jnp.asarray(coords))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('mode', ['multiply', 'add'])
def test_elm_mask_on_log_scores(mode):
  mask = ElementwiseMask((SIDE, SIDE), mode=mode)
  weight = np.random.default_rng(3).normal(size=(N, N))
  mask.weight[...] = jnp.asarray(weight, jnp.float32)
  attn = make_attention_layer(e_step='hard', pi='none', mask=mask)
  x = tokens()
  coords = grid.grid_coords(SIDE, SIDE)
  ref = Reference(attn)
  scores, q = ref.log_scores(x, coords)
  if mode == 'add':
    expected = np_softmax(scores + weight)
  else:
    expected = np_softmax((scores + ref.dropped_query_term(q)[..., None]) * weight)
  np.testing.assert_allclose(
    attn.attention_weights(x, jnp.asarray(coords)), expected, rtol=1e-4, atol=1e-6
  )


def one_key_pair(variant):
  """M = 1 score and a dot-product score sharing one key projection."""
  mgk = MixtureOfKeysScore(
    DIM,
    num_heads=HEADS,
    head_dim=HEAD_DIM,
    num_keys=1,
    variant=variant,
    e_step='soft',
    pi='learned',
    pi_scope='head',
    learn_variance=False,
    use_bias=False,
    rngs=nnx.Rngs(0),
  )
  dot = DotProductScore(DIM, num_heads=HEADS, head_dim=HEAD_DIM, use_bias=False, rngs=nnx.Rngs(1))
  # pi is irrelevant with one key: its log_softmax over one component is 0.
  mgk.pi_logits[...] = jnp.full(mgk.pi_logits.shape, 3.0)
  return mgk, dot


def set_kernel(mgk, dot, kernel):
  dot.key.kernel[...] = kernel
  if mgk.variant == 'mgk':
    mgk.key[0].kernel[...] = kernel
  else:
    mgk.key.kernel[...] = kernel


@pytest.mark.parametrize('variant', ['mgk', 'smgk'])
def test_one_key_with_equal_key_norms_is_softmax_attention(variant):
  """MGK paper: one key, equal key norms, sigma^2 = sqrt(D) -> softmax(q . k / sqrt(D))."""
  mgk, dot = one_key_pair(variant)
  assert DIM == HEADS * HEAD_DIM
  set_kernel(mgk, dot, jnp.eye(DIM))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, N, HEADS, HEAD_DIM))
  x = 1.7 * x / np.linalg.norm(x, axis=-1, keepdims=True)  # every head's key has norm 1.7
  x = jnp.asarray(x.reshape(2, N, DIM), jnp.float32)
  q = jnp.asarray(rng.normal(size=(2, HEADS, N, HEAD_DIM)), jnp.float32)
  np.testing.assert_allclose(
    jax.nn.softmax(mgk(x, q)), jax.nn.softmax(dot(x, q)), rtol=1e-5, atol=1e-7
  )


def test_one_key_general_norms_adds_key_norm_bias():
  """With unequal norms: softmax(q . k / s^2 - |k|^2 / (2 s^2)), s^2 = sqrt(D)."""
  mgk, dot = one_key_pair('mgk')
  kernel = jnp.asarray(np.random.default_rng(4).normal(size=(DIM, DIM)) / 3, jnp.float32)
  set_kernel(mgk, dot, kernel)
  x = tokens()
  q = jnp.asarray(np.random.default_rng(5).normal(size=(2, HEADS, N, HEAD_DIM)), jnp.float32)
  k = np_heads(np.asarray(x) @ np.asarray(kernel))
  bias = -0.5 * (k**2).sum(-1)[:, :, None, :] / np.sqrt(HEAD_DIM)
  np.testing.assert_allclose(
    jax.nn.softmax(mgk(x, q)), np_softmax(np.asarray(dot(x, q)) + bias), rtol=1e-5, atol=1e-7
  )
  assert not np.allclose(jax.nn.softmax(mgk(x, q)), jax.nn.softmax(dot(x, q)), atol=1e-3)


def test_config_errors_name_the_field():
  config = common.attention('mixture_of_keys')
  config.mixture.variant = 'kmeans'
  with pytest.raises(ValueError, match='attention.mixture.variant'):
    make_score(
      config, dim=DIM, num_heads=HEADS, head_dim=HEAD_DIM, dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
  config = common.attention('mixture_of_keys', mixture=common.mixture_of_keys(e_step='hard'))
  with pytest.raises(ValueError, match="mixture.pi='e_step'"):
    make_score(
      config, dim=DIM, num_heads=HEADS, head_dim=HEAD_DIM, dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
  config.mixture.pi = 'em'
  with pytest.raises(ValueError, match='attention.mixture.pi'):
    make_score(
      config, dim=DIM, num_heads=HEADS, head_dim=HEAD_DIM, dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
  bare = ml_collections.ConfigDict(dict(score='mixture_of_keys', qkv_bias=False))
  with pytest.raises(ValueError, match='attention.mixture section'):
    make_score(
      bare, dim=DIM, num_heads=HEADS, head_dim=HEAD_DIM, dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
  assert 'mixture' not in common.attention()


def tiny_vit(score: str, num_heads: int, **mixture):
  model = vit_cifar10.model('gmm')
  model.update(
    dict(patch_size=2, dim=16, depth=1, num_heads=num_heads, head_dim=4, stochastic_depth=0.0)
  )
  model.attention = common.attention(
    score, mixture=common.mixture_of_keys(**mixture) if mixture else None
  )
  return build_model(model, num_classes=10, image_size=8, channels=3, rngs=nnx.Rngs(0))


def test_vit_with_half_the_heads_trains():
  images, labels = model_testing.random_batch(8, 8)
  mgk = tiny_vit('mixture_of_keys', 2)
  losses = model_testing.train_losses(mgk, images, labels, steps=8, learning_rate=3e-3)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.1
  # Half the heads at the same head dim: queries, values and the output projection
  # halve, the two key projections together match the one of the full-head model.
  softmax = tiny_vit('dot_product', 4)
  assert model_testing.count_params(mgk) < model_testing.count_params(softmax)


def test_gmm_hvit_config_halves_heads_and_saves_parameters():
  """CIFAR-size counts: the GMM-ViT's 2,693,122 (reference) less, per layer, the softmax
  attention (4 C x 12*16 maps, output bias, 5x12x2 mask) plus the mixture's (q, two
  keys, v and output at 6*16, output bias, 5x6x2 mask; its pi, per head, key and key
  position, is E-step state, not a parameter)."""
  config = gmm_hvit_cifar10.get_config()
  assert config.model.num_heads == 6 and config.model.head_dim == 16
  assert config.patch_selection.kind == 'variance' and config.patch_selection.keep == 0.7
  assert config.model.attention.mixture.pi_scope == 'position'

  def count(model_cfg):
    abstract = nnx.eval_shape(
      lambda: build_model(model_cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
    )
    return model_testing.count_params(abstract)

  c, depth = 192, 9
  softmax_layer = 4 * c * 12 * 16 + c + 5 * 12 * 2
  mixture_layer = 5 * c * 6 * 16 + c + 5 * 6 * 2
  assert count(vit_cifar10.model('gmm')) == 2_693_122
  assert count(config.model) == 2_693_122 - depth * (softmax_layer - mixture_layer)


def test_bundle_carries_the_e_step_pi(tmp_path):
  """Export saves pi with the parameters; the bundle's forward and rebuilt model use it."""
  from gmm_vit_jax import export
  from gmm_vit_jax.augment.basic import normalize

  config = model_testing.tiny_vit_config('gmm', depth=1)
  config.model.attention = common.attention('mixture_of_keys', mixture=common.mixture_of_keys())
  model = build_model(config.model, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))
  score = model.blocks[0].attention.score
  pi = np.random.default_rng(0).dirichlet(np.ones(2), size=score.pi.shape[::2])
  score.pi[...] = jnp.asarray(np.moveaxis(pi, -1, 1), jnp.float32)
  export.save_bundle(model, config, str(tmp_path), platforms=('cpu',))
  bundle = export.load(str(tmp_path))
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  info = export._preprocess_facts(config)
  expected = np.asarray(model(normalize(images, info['mean'], info['std'])))
  np.testing.assert_allclose(bundle.predict(images), expected, atol=1e-5)
  rebuilt = bundle.build_model().blocks[0].attention.score.pi[...]
  np.testing.assert_array_equal(rebuilt, score.pi[...])
