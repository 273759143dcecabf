"""The masks learn: their parameters get non-zero gradients and move under AdamW, in every
backbone. A falling loss alone would not show it: the head can lower the loss by itself."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from gmm_vit_jax.models import build_from_config
from tests.model_testing import TINY_CONFIGS, quick_compiles, random_batch

MASK_PARAMS = ('sigma', 'alpha', 'weight')


@pytest.fixture(autouse=True, scope='module')
def _quick_compiles():
  with quick_compiles():
    yield


def mask_leaves(tree) -> dict[str, np.ndarray]:
  """{path: array} of the GMM's sigma and alpha and ELM's matrix in a params pytree."""
  return {'.'.join(map(str, path)): np.asarray(value)
          for path, value in nnx.to_flat_state(tree)
          if 'mask' in path and path[-1] in MASK_PARAMS}


@pytest.mark.parametrize('name,kind', [(name, 'gmm') for name in sorted(TINY_CONFIGS)]
                         + [('vit', 'elm'), ('cait', 'elm')])
def test_mask_parameters_get_gradients_and_move(name, kind):
  config = TINY_CONFIGS[name](kind)
  config.model.dtype = 'float32'
  model = build_from_config(config)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.to_pure_dict(rest)
  size = 32
  images, labels = random_batch(4, size, seed=1)
  tx = optax.adamw(1e-2)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads

  before = mask_leaves(params)
  expected_layers = sum(1 for _, m in nnx.iter_modules(model)
                        if type(m).__name__ in ('GaussianMixtureMask', 'ElementwiseMask'))
  assert expected_layers and len(before) == expected_layers * (2 if kind == 'gmm' else 1)
  opt_state = tx.init(params)
  for i in range(2):
    params, opt_state, grads = step(params, opt_state)
    if i == 0:
      for path, grad in mask_leaves(grads).items():
        assert np.all(grad != 0), f'{path}: {np.mean(grad == 0):.0%} of its gradient is zero'
  for path, value in mask_leaves(params).items():
    assert np.all(value != before[path]), f'{path} did not move'
