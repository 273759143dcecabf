"""The masks learn: their parameters get non-zero gradients and move under AdamW, in every
backbone. A falling loss alone would not show it: the head can lower the loss by itself."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from gmm_vit_jax.attention.masks import ElementwiseMask, GaussianMixtureMask
from gmm_vit_jax.models import build_from_config
from tests.model_testing import TINY_CONFIGS, random_batch

MASK_PARAMS = ('sigma', 'alpha', 'weight')


pytestmark = pytest.mark.usefixtures('quick_compiles')


def mask_leaves(tree) -> dict[str, np.ndarray]:
  """{path: array} of the GMM's sigma and alpha and ELM's matrix in a params pytree."""
  return {
    '.'.join(map(str, path)): np.asarray(value)
    for path, value in nnx.to_flat_state(tree)
    if 'mask' in path and path[-1] in MASK_PARAMS
  }


@pytest.mark.parametrize(
  'name,kind', [(name, 'gmm') for name in sorted(TINY_CONFIGS)] + [('vit', 'elm'), ('cait', 'elm')]
)
def test_mask_parameters_get_gradients_and_move(name, kind):
  config = TINY_CONFIGS[name](kind)
  config.model.dtype = 'float32'
  # PiT reads only the CLS token, whose logits row and column the mask leaves alone, so
  # the mask of its very last block cannot reach the output (as in the reference): two
  # blocks in the last stage, the last one's mask checked to get no gradient at all.
  dead = None
  if name == 'pit':
    config.model.depths = (1, 1, 2)
    dead = 'stages.2.1.'
  model = build_from_config(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.to_pure_dict(rest)
  images, labels = random_batch(4, 32, seed=1)
  # Plain Adam: weight decay would move parameters without a gradient too.
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads

  before = mask_leaves(params)
  expected_layers = sum(
    1 for _, m in nnx.iter_modules(model) if isinstance(m, (GaussianMixtureMask, ElementwiseMask))
  )
  assert expected_layers and len(before) == expected_layers * (2 if kind == 'gmm' else 1)
  opt_state = tx.init(params)
  params, opt_state, grads = step(params, opt_state)
  params, opt_state, _ = step(params, opt_state)
  for path, grad in mask_leaves(grads).items():
    live = grad != 0
    if dead is not None and path.startswith(dead):
      assert not live.any(), path
      continue
    # Every alpha and ELM entry scales logits, so each has a gradient. A kernel whose
    # sigma ~ N(10, 10) was drawn near 0 is a point on the token itself (exp(-d2 / 2
    # sigma^2) is 0 off it and 1 on it, whatever sigma): its sigma has none, rightly.
    assert live.mean() >= (0.5 if path.endswith('sigma') else 1.0), (path, live.mean())
    assert np.all(mask_leaves(params)[path][live] != before[path][live]), f'{path} did not move'
