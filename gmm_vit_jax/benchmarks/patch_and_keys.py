"""What patch dropping and mixture-of-keys attention cost on the CIFAR-size GMM-ViT.

    python -m gmm_vit_jax.benchmarks.patch_and_keys --config=configs/gmm_vit_cifar10.py \
        --keys_config=configs/gmm_hvit_cifar10.py [--batch=128] [--steps=5]

--config gives the softmax model and the optimizer, --keys_config the mixture-of-keys
model and the patch selection (its keep fraction replaced by each row's). For each
model: trainable parameters, the FLOPs XLA counts for one jitted train step
(patch selection, forward, backward and AdamW on a batch of 32x32 RGB images), and the
step's measured time (median over --steps runs after a warm-up): wall-clock, and the
CPU time of this process (all its threads), which other work on a shared machine
disturbs less. Rows: the GMM-ViT
(12 softmax heads x 16) keeping all, 70% and 50% of the tokens, and mixture-of-keys
attention on 6 heads x 16 (the GMM-HViT) keeping all and 70%. With
configs/gmm_hvit_cifar10.py, patches are selected by the variance heuristic with sampling.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from gmm_vit_jax import cli
from gmm_vit_jax.models import build_model
from gmm_vit_jax.patches import select_tokens

IMAGE_SIZE, CHANNELS, NUM_CLASSES = 32, 3, 10


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def train_step_fn(
  model: nnx.Module, tx: optax.GradientTransformation, selection: ml_collections.ConfigDict | None
):
  """A jittable (params, buffers, opt_state, images, labels, key)
  -> (params, buffers, opt_state, loss); buffers as the trainer's (the E-step's pi)."""
  graphdef = nnx.graphdef(model)
  patch_size = model.patch_size

  def step(params, buffers, opt_state, images, labels, key):
    select_key, dropout_key = jax.random.split(key)
    token_index = (
      None
      if selection is None
      else select_tokens(images, select_key, selection, patch_size=patch_size)
    )

    def loss_fn(p):
      net = nnx.merge(graphdef, p, buffers)
      logits = net(
        images, token_index=token_index, deterministic=False, rngs=nnx.Rngs(dropout=dropout_key)
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.to_pure_dict(nnx.split(net, nnx.Param, ...)[2])

    (loss, buffers), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), buffers, opt_state, loss

  return step


def measure(
  model_cfg: ml_collections.ConfigDict,
  keep: float,
  *,
  optimizer: ml_collections.ConfigDict,
  patch_selection: ml_collections.ConfigDict,
  batch: int,
  steps: int,
  warmup: int,
) -> dict:
  """optimizer: a config's optimizer section; patch_selection: a config's patch selection,
  used with `keep` in place of its own keep fraction (keep 1.0: no selection)."""
  model = build_model(
    model_cfg, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, channels=CHANNELS, rngs=nnx.Rngs(0)
  )
  tx = optax.adamw(
    optimizer.learning_rate,
    b1=optimizer.b1,
    b2=optimizer.b2,
    eps=optimizer.eps,
    weight_decay=optimizer.weight_decay,
  )
  selection = None
  if keep != 1.0:
    selection = patch_selection.copy_and_resolve_references()
    selection.keep = keep
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
    params, buffers, opt_state, loss = compiled(
      params, buffers, opt_state, images, labels, jax.random.key(i)
    )
    jax.block_until_ready((params, loss))
    if i >= warmup:
      wall.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
  return dict(
    params=count_params(model),
    flops=cost['flops'],
    transcendentals=cost.get('transcendentals', float('nan')),
    seconds=statistics.median(wall),
    cpu_seconds=statistics.median(cpu),
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  softmax, mixture = args.config.model, args.keys_config.model
  rows = [
    ('GMM-ViT softmax', softmax, 1.0),
    ('GMM-ViT softmax', softmax, 0.7),
    ('GMM-ViT softmax', softmax, 0.5),
    ('GMM-ViT mixture-of-keys', mixture, 1.0),
    ('GMM-ViT mixture-of-keys', mixture, 0.7),
  ]
  print(
    f'jitted train step (selection + forward + backward + AdamW), batch {args.batch}, '
    f'{IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, {jax.devices()[0].device_kind}, '
    f'median of {args.steps} steps'
  )
  header = (
    f'{"model":<24} {"heads":>6} {"keep":>5} {"tokens":>6} {"params":>10} '
    f'{"GFLOPs":>7} {"rel":>5} {"Mexp":>6} {"wall s":>7} {"rel":>5} {"cpu s":>7} '
    f'{"rel":>5}'
  )
  print(header)
  print('-' * len(header))
  base = None
  for name, model_cfg, keep in rows:
    r = measure(
      model_cfg,
      keep,
      optimizer=args.config.optimizer,
      patch_selection=args.keys_config.patch_selection,
      batch=args.batch,
      steps=args.steps,
      warmup=args.warmup,
    )
    base = base or r
    tokens = max(1, round(keep * (IMAGE_SIZE // model_cfg.patch_size) ** 2))
    heads = f'{model_cfg.num_heads}x{model_cfg.head_dim}'
    print(
      f'{name:<24} {heads:>6} {keep:>5.2f} {tokens:>6} {r["params"]:>10,} '
      f'{r["flops"] / 1e9:>7.1f} {r["flops"] / base["flops"]:>5.2f} '
      f'{r["transcendentals"] / 1e6:>6.0f} '
      f'{r["seconds"]:>7.2f} {r["seconds"] / base["seconds"]:>5.2f} '
      f'{r["cpu_seconds"]:>7.2f} {r["cpu_seconds"] / base["cpu_seconds"]:>5.2f}',
      flush=True,
    )


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The softmax GMM-ViT config.')
  config_flags.DEFINE_config_file('keys_config', None, 'The mixture-of-keys (GMM-HViT) config.')
  flags.DEFINE_integer('batch', 128, 'Images per train step.')
  flags.DEFINE_integer('steps', 5, 'Timed steps; the median counts.')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps first.')
  flags.mark_flags_as_required(['config', 'keys_config'])
  cli.run_app(main)
