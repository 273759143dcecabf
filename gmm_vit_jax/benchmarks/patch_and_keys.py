"""What patch dropping and mixture-of-keys attention cost on the CIFAR-size GMM-ViT.

    python -m gmm_vit_jax.benchmarks.patch_and_keys [--batch 128] [--steps 5]

For each model: trainable parameters, the FLOPs XLA counts for one jitted train step
(patch selection, forward, backward and AdamW on a batch of 32x32 RGB images), and the
step's measured time (median over --steps runs after a warm-up): wall-clock, and the
CPU time of this process (all its threads), which other work on a shared machine
disturbs less. Rows: the GMM-ViT
(12 softmax heads x 16) keeping all, 70% and 50% of the tokens, and mixture-of-keys
attention on 6 heads x 16 (the GMM-HViT) keeping all and 70%. Patches are selected by
the variance heuristic with sampling, as configs/gmm_hvit_cifar10.py does.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from configs import common, gmm_hvit_cifar10, vit_cifar10
from gmm_vit_jax.models import build_model
from gmm_vit_jax.patches import select_tokens

IMAGE_SIZE, CHANNELS, NUM_CLASSES = 32, 3, 10


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def train_step_fn(model: nnx.Module, tx: optax.GradientTransformation,
                  selection: ml_collections.ConfigDict | None):
  """A jittable (params, buffers, opt_state, images, labels, key)
  -> (params, buffers, opt_state, loss); buffers as the trainer's (the E-step's pi)."""
  graphdef = nnx.graphdef(model)
  patch_size = model.patch_size

  def step(params, buffers, opt_state, images, labels, key):
    select_key, dropout_key = jax.random.split(key)
    token_index = (None if selection is None
                   else select_tokens(images, select_key, selection, patch_size=patch_size))

    def loss_fn(p):
      net = nnx.merge(graphdef, p, buffers)
      logits = net(images, token_index=token_index, deterministic=False,
                   rngs=nnx.Rngs(dropout=dropout_key))
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.to_pure_dict(nnx.split(net, nnx.Param, ...)[2])

    (loss, buffers), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), buffers, opt_state, loss

  return step


def measure(model_cfg: ml_collections.ConfigDict, keep: float, *, batch: int, steps: int,
            warmup: int) -> dict:
  model = build_model(model_cfg, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE,
                      channels=CHANNELS, rngs=nnx.Rngs(0))
  recipe = common.paper_recipe('cifar10').optimizer
  tx = optax.adamw(recipe.learning_rate, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps,
                   weight_decay=recipe.weight_decay)
  selection = (None if keep == 1.0
               else common.patch_selection('variance', keep=keep, selection='sample'))
  _, params, buffers = nnx.split(model, nnx.Param, ...)
  buffers = nnx.to_pure_dict(buffers)
  opt_state = tx.init(params)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(batch, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)
  step = jax.jit(train_step_fn(model, tx, selection), donate_argnums=(0, 1, 2))
  compiled = step.lower(params, buffers, opt_state, images, labels, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  wall, cpu = [], []
  for i in range(warmup + steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    params, buffers, opt_state, loss = compiled(params, buffers, opt_state, images, labels,
                                                jax.random.key(i))
    jax.block_until_ready((params, loss))
    if i >= warmup:
      wall.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
  return dict(params=count_params(model), flops=cost['flops'],
              transcendentals=cost.get('transcendentals', float('nan')),
              seconds=statistics.median(wall), cpu_seconds=statistics.median(cpu))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=1)
  args = parser.parse_args()
  softmax = vit_cifar10.model('gmm')
  mixture = gmm_hvit_cifar10.get_config().model
  rows = [('GMM-ViT softmax', softmax, 1.0), ('GMM-ViT softmax', softmax, 0.7),
          ('GMM-ViT softmax', softmax, 0.5), ('GMM-ViT mixture-of-keys', mixture, 1.0),
          ('GMM-ViT mixture-of-keys', mixture, 0.7)]
  print(f'jitted train step (selection + forward + backward + AdamW), batch {args.batch}, '
        f'{IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, {jax.devices()[0].device_kind}, '
        f'median of {args.steps} steps')
  header = (f'{"model":<24} {"heads":>6} {"keep":>5} {"tokens":>6} {"params":>10} '
            f'{"GFLOPs":>7} {"rel":>5} {"Mexp":>6} {"wall s":>7} {"rel":>5} {"cpu s":>7} '
            f'{"rel":>5}')
  print(header)
  print('-' * len(header))
  base = None
  for name, model_cfg, keep in rows:
    r = measure(model_cfg, keep, batch=args.batch, steps=args.steps, warmup=args.warmup)
    base = base or r
    tokens = max(1, round(keep * (IMAGE_SIZE // model_cfg.patch_size) ** 2))
    heads = f'{model_cfg.num_heads}x{model_cfg.head_dim}'
    print(f'{name:<24} {heads:>6} {keep:>5.2f} {tokens:>6} {r["params"]:>10,} '
          f'{r["flops"] / 1e9:>7.1f} {r["flops"] / base["flops"]:>5.2f} '
          f'{r["transcendentals"] / 1e6:>6.0f} '
          f'{r["seconds"]:>7.2f} {r["seconds"] / base["seconds"]:>5.2f} '
          f'{r["cpu_seconds"]:>7.2f} {r["cpu_seconds"] / base["cpu_seconds"]:>5.2f}', flush=True)

if __name__ == '__main__':
  main()
