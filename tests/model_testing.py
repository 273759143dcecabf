"""Shared test helpers: tiny configs and a few-step training check for any backbone."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs import (
  cait_cifar10,
  hatnet_cifar10,
  pit_cifar10,
  swin_cifar10,
  t2t_cifar10,
  vit_cifar10,
)


def train_losses(
  model: nnx.Module,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  steps: int,
  learning_rate: float = 1e-3,
  **call_kwargs,
) -> list[float]:
  """Full-batch AdamW steps on one tiny batch; returns the loss before each step.

  Like the trainer's step, the non-parameter state a training pass sets (the mixture's
  E-step) is carried from step to step.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.to_pure_dict(rest)
  tx = optax.adamw(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, key):
    def loss_fn(p):
      net = nnx.merge(graphdef, p, rest)
      logits = net(images, deterministic=False, rngs=nnx.Rngs(dropout=key), **call_kwargs)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.to_pure_dict(nnx.split(net, nnx.Param, ...)[2])

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  losses = []
  for i in range(steps):
    params, rest, opt_state, loss = step(params, rest, opt_state, jax.random.key(i))
    losses.append(float(loss))
  return losses


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def random_batch(batch: int, size: int, channels: int = 3, num_classes: int = 10, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  return images, labels


def tiny_vit_config(mask_kind: str, dataset: str = 'cifar10', *, depth: int = 2):
  """The paper's ViT experiment config shrunk for fast tests (dim 32, 4 heads x 8)."""
  config = vit_cifar10.get_config(dataset)
  config.model = vit_cifar10.model(mask_kind)
  config.model.update(dict(depth=depth, dim=32, num_heads=4, head_dim=8))
  return config


def tiny_swin_config(mask_kind: str):
  """The paper's Swin experiment shrunk to patch 4 and stage widths 8 and 16.

  8x8 tokens in four 4x4 windows (shifted in odd blocks), then one 4x4 window.
  """
  config = swin_cifar10.get_config()
  config.model = swin_cifar10.model(mask_kind, 'cifar10')
  config.model.update(dict(patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(2, 4)))
  return config


def tiny_cait_config(mask_kind: str):
  """The paper's CaiT experiment shrunk: 8x8 tokens, 2 patch and 2 class layers, dim 16."""
  config = cait_cifar10.get_config()
  config.model = cait_cifar10.model(mask_kind, 'cifar10')
  config.model.update(dict(dim=16, depth=2, class_depth=2, num_heads=2, head_dim=8, mlp_dim=32))
  return config


def tiny_pit_config(mask_kind: str):
  """The paper's PiT experiment shrunk: one-layer stages 8, 16 and 32 wide on 16x16, 8x8, 4x4."""
  config = pit_cifar10.get_config()
  config.model = pit_cifar10.model(mask_kind, 'cifar10')
  config.model.update(dict(dim=8, depths=(1, 1, 1), num_heads=(2, 2, 2), head_dim=4))
  return config


def tiny_t2t_config(mask_kind: str):
  """The paper's T2T-ViT experiment shrunk: a 4-wide token transformer on 16x16, then a
  16-wide one-layer encoder on 8x8."""
  config = t2t_cifar10.get_config()
  config.model = t2t_cifar10.model(mask_kind, 'cifar10')
  config.model.update(dict(token_dim=4, embed_dim=16, depth=1, num_heads=2))
  return config


def tiny_hatnet_config(mask_kind: str):
  """The CIFAR HAT-Net shrunk to two one-block stages, 8 and 16 wide: a 16x16 map in 2x2
  windows pooled to 8x8, then one 8x8 window."""
  config = hatnet_cifar10.get_config()
  config.model = hatnet_cifar10.model(mask_kind, 'cifar10')
  config.model.update(
    dict(
      dims=(8, 16),
      head_dim=4,
      depths=(1, 1),
      expansions=(2, 2),
      kernel_sizes=(3, 3),
      grid_sizes=(2, 1),
      ds_ratios=(2, 1),
    )
  )
  return config


TINY_CONFIGS = {
  'vit': tiny_vit_config,
  'swin': tiny_swin_config,
  'cait': tiny_cait_config,
  'pit': tiny_pit_config,
  't2t': tiny_t2t_config,
  'hatnet': tiny_hatnet_config,
}


@contextlib.contextmanager
def quick_compiles():
  """XLA with most optimisations off: tiny test programs spend far longer compiling than running.

  For a whole module: `pytestmark = pytest.mark.usefixtures('quick_compiles')` (conftest.py).
  Modules that check behaviour (models against NumPy and their twins, the training loop's
  files and resumes) take it; those that measure speed, memory, or the CPU-only forms XLA
  optimises keep the optimising compiler.
  """
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)


# quick_compiles() for a subprocess (train.py, a notebook's kernel): its environment.
QUICK_COMPILES_ENV = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
