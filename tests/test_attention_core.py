"""The attention core's implementations against NumPy and against each other."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmm_vit_jax.attention import core
from gmm_vit_jax.attention.masks import MaskValues
from gmm_vit_jax.models import build_model
from tests.model_testing import random_batch, tiny_cait_config, tiny_swin_config, tiny_vit_config

pytestmark = pytest.mark.usefixtures('quick_compiles')

B, H, N, D = 6, 3, 8, 8


def arrays(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=(batch, H, N, D)).astype(np.float32) for _ in range(3))
  return q, k, v, rng


def numpy_attention(q, k, v, scale, values=None, valid=None, mode='multiply', bias=None):
  """softmax(mask(q k^T scale) + bias) v, by loops-free NumPy in float64."""
  logits = np.einsum('bhid,bhjd->bhij', q.astype(np.float64), k) * scale
  if values is not None:
    valid = valid if valid.ndim == 2 else valid[:, None]
    masked = logits * values if mode == 'multiply' else logits + values
    logits = np.where(valid, masked, logits)
  if bias is not None:
    logits = logits + bias
  logits = logits - logits.max(-1, keepdims=True)
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return np.einsum('bhij,bhjd->bhid', weights, v)


def mask_cases(rng, batch=B):
  valid = rng.random((N, N)) > 0.2
  return {
    'none': None,
    'shared gmm': MaskValues(rng.normal(size=(H, N, N)).astype(np.float32), valid, 'multiply'),
    'shared elm add': MaskValues(rng.normal(size=(1, N, N)).astype(np.float32), valid, 'add'),
    'per example': MaskValues(
      rng.normal(size=(batch, H, N, N)).astype(np.float32),
      rng.random((batch, N, N)) > 0.2,
      'multiply',
    ),
  }


def bias_cases(rng, batch=B):
  return {
    'none': None,
    'shared': rng.normal(size=(1, H, N, N)).astype(np.float32),
    'per example': rng.normal(size=(batch, H, N, N)).astype(np.float32),
  }


@pytest.mark.parametrize('mask_case', ['none', 'shared gmm', 'shared elm add', 'per example'])
@pytest.mark.parametrize('bias_case', ['none', 'shared', 'per example'])
def test_reference_and_blockwise_equal_numpy(mask_case, bias_case):
  q, k, v, rng = arrays()
  mask, bias = mask_cases(rng)[mask_case], bias_cases(rng)[bias_case]
  expected = numpy_attention(q, k, v, 0.3, *(mask or (None, None, 'multiply')), bias=bias)
  for got in (
    core.reference_attention(q, k, v, scale=0.3, mask=mask, bias=bias),
    core.blockwise_attention(q, k, v, scale=0.3, mask=mask, bias=bias, max_slices=4),
  ):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
  'mask_case,bias_case', [('shared gmm', 'shared'), ('per example', 'per example')]
)
def test_blockwise_gradients_equal_the_references(mask_case, bias_case):
  """Gradients reach q, k, v, the mask values and the bias, summed over slices."""
  q, k, v, rng = arrays(1)
  mask, bias = mask_cases(rng)[mask_case], bias_cases(rng)[bias_case]
  target = rng.normal(size=(B, H, N, D)).astype(np.float32)

  def loss(fn, q, k, v, values, bias):
    out = fn(q, k, v, scale=0.3, mask=MaskValues(values, mask.valid, mask.mode), bias=bias)
    return jnp.sum((out - target) ** 2)

  grad = lambda fn: jax.grad(loss, argnums=(1, 2, 3, 4, 5))(fn, q, k, v, mask.values, bias)
  blockwise = lambda *a, **kw: core.blockwise_attention(*a, max_slices=3, **kw)
  for got, want in zip(grad(blockwise), grad(core.reference_attention)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_logit_maps_act_around_the_softmax_in_both_cores():
  q, k, v, rng = arrays(3)
  pre, post = (rng.normal(size=(H, H)).astype(np.float32) for _ in range(2))
  logits = np.einsum('bhid,bhjd->bhij', q.astype(np.float64), k) * 0.3
  logits = np.einsum('bhij,hg->bgij', logits, pre)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights = np.einsum('bhij,hg->bgij', weights / weights.sum(-1, keepdims=True), post)
  want = np.einsum('bhij,bhjd->bhid', weights, v)
  maps = dict(
    pre_softmax=lambda x: jnp.einsum('bhij,hg->bgij', x, pre),
    post_softmax=lambda x: jnp.einsum('bhij,hg->bgij', x, post),
  )
  for got in (
    core.reference_attention(q, k, v, scale=0.3, **maps),
    core.blockwise_attention(q, k, v, scale=0.3, max_slices=3, **maps),
  ):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  'batch,max_slices,expected',
  [(128, 16, 16), (500, 16, 10), (6, 4, 3), (7, 16, 7), (13, 4, 1), (1, 16, 1)],
)
def test_num_slices_is_the_largest_divisor_allowed(batch, max_slices, expected):
  assert core.num_slices(batch, max_slices) == expected


SHARDED_RUN = """
import jax, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from gmm_vit_jax.attention import core
from tests.test_attention_core import arrays, mask_cases, numpy_attention
assert jax.device_count() == 4
q, k, v, rng = arrays(2, batch=8)
mask = mask_cases(rng, batch=8)['per example']
mesh = jax.make_mesh((4,), ('data',), axis_types=(AxisType.Auto,))
sharded = NamedSharding(mesh, PartitionSpec('data'))
q, k, v = (jax.device_put(x, sharded) for x in (q, k, v))
run = jax.jit(lambda q, k, v: core.blockwise_attention(q, k, v, scale=0.5, mask=mask,
                                                       max_slices=2))
hlo = run.lower(q, k, v).compile().as_text()
assert not any(op in hlo for op in ('all-gather', 'all-to-all', 'collective-permute')), hlo
np.testing.assert_allclose(run(q, k, v), numpy_attention(q, k, v, 0.5, *mask), rtol=2e-5,
                           atol=2e-6)
"""


def test_blockwise_slices_stay_on_their_devices_on_a_sharded_batch():
  """Slice s holds examples s, s + S, ...: each device works on its own examples, no gathers."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  done = subprocess.run(
    [sys.executable, '-c', SHARDED_RUN],
    env=env,
    capture_output=True,
    text=True,
    cwd=pathlib.Path(__file__).parents[1],
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize('mask_case', ['none', 'shared elm add'])
@pytest.mark.parametrize('bias_case', ['none', 'shared', 'per example'])
def test_cudnn_wrapper_passes_layout_scale_and_bias(mask_case, bias_case):
  """jax.nn.dot_product_attention's own 'xla' backend stands in for cuDNN on a CPU."""
  q, k, v, rng = arrays(3)
  mask, bias = mask_cases(rng)[mask_case], bias_cases(rng)[bias_case]
  got = core.cudnn_attention(q, k, v, scale=0.3, mask=mask, bias=bias, implementation='xla')
  expected = numpy_attention(q, k, v, 0.3, *(mask or (None, None, 'add')), bias=bias)
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def test_cudnn_refuses_a_multiplicative_mask():
  q, k, v, rng = arrays(4)
  with pytest.raises(ValueError, match="mask.mode='add'"):
    core.cudnn_attention(
      q, k, v, scale=0.3, mask=mask_cases(rng)['shared gmm'], implementation='xla'
    )


def resolve(requested, dot_product=True, logit_maps=False, **kw):
  return core.resolve_implementation(
    requested, dot_product=dot_product, logit_maps=logit_maps, **kw
  )


def test_auto_picks_blockwise_on_a_cpu_and_xla_for_other_scores():
  assert jax.default_backend() == 'cpu'
  kw = dict(dtype=jnp.float32, head_dim=16, mask_mode='multiply', lengths=(65, 65))
  assert resolve('auto', **kw) == 'blockwise'
  assert resolve('auto', logit_maps=True, **kw) == 'blockwise'
  # CaiT's class attention: one query, every token a key.
  assert resolve('auto', **{**kw, 'lengths': (1, 65)}) == 'blockwise'
  for short in [(16, 16), (core.SHORT_KEYS, core.SHORT_KEYS)]:
    assert resolve('auto', **{**kw, 'lengths': short}) == 'xla'
  assert resolve('blockwise', **{**kw, 'lengths': (16, 16)}) == 'blockwise'
  assert resolve('auto', dot_product=False, **kw) == 'xla'
  assert resolve('xla', **kw) == 'xla'


def test_unrunnable_implementations_say_why():
  kw = dict(dtype=jnp.bfloat16, head_dim=16, mask_mode='add')
  with pytest.raises(ValueError, match="'cudnn' cannot run here: it needs a GPU"):
    resolve('cudnn', **kw)
  with pytest.raises(ValueError, match='needs dot-product scores'):
    resolve('blockwise', dot_product=False, **kw)
  with pytest.raises(ValueError, match='model.attention.implementation'):
    resolve('flash', **kw)


def test_cudnn_conditions_name_the_failing_one(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  ok = dict(dtype=jnp.bfloat16, head_dim=16, mask_mode='add', lengths=(64, 64))
  assert core.cudnn_supports(**ok) is None
  assert resolve('auto', **ok) == 'cudnn'
  for change, words in [
    (dict(dtype=jnp.float32), 'bfloat16 or float16'),
    (dict(head_dim=12), 'multiple of 8'),
    (dict(mask_mode='multiply'), 'additive mask only'),
    (dict(lengths=(65, 65)), 'even sequence lengths'),
  ]:
    assert words in core.cudnn_supports(**{**ok, **change})
    assert resolve('auto', **{**ok, **change}) == 'xla'
  # JAX's cuDNN training rule passes a bias even where there is none: odd lengths fail.
  assert 'even sequence lengths' in core.cudnn_supports(
    **{**ok, 'mask_mode': None, 'lengths': (65, 65)}
  )
  assert resolve('auto', logit_maps=True, **ok) == 'xla'
  with pytest.raises(ValueError, match='no place for talking heads'):
    resolve('cudnn', logit_maps=True, **ok)


@pytest.mark.parametrize(
  'tiny_config,mask_kind',
  [
    (tiny_vit_config, 'gmm'),
    (tiny_vit_config, 'elm'),
    (tiny_vit_config, 'none'),
    (tiny_swin_config, 'gmm'),
    (tiny_cait_config, 'gmm'),
  ],
)
def test_models_train_the_same_with_either_core(tiny_config, mask_kind):
  """Logits and parameter gradients do not depend on the implementation.

  Swin adds a per-window bias; CaiT mixes heads around the softmax (talking heads).
  """
  images, labels = random_batch(4, 32)
  results = []
  for implementation in ('xla', 'blockwise'):
    cfg = tiny_config(mask_kind).model
    cfg.attention.implementation = implementation
    cfg.attention.max_slices = 2
    model = build_model(cfg, num_classes=10, image_size=32, channels=3, rngs=nnx.Rngs(0))

    def loss(model):
      logits = model(images)
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

    grads, logits = nnx.jit(nnx.grad(loss, has_aux=True))(model)  # Eager Swin takes minutes.
    results.append((logits, jax.tree.leaves(nnx.state(grads, nnx.Param))))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
  for a, b in zip(results[0][1], results[1][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
