"""Evaluation only: a trained run or an inference bundle on a dataset split.

    python -m gmm_vit_jax.evaluate --workdir=RUN [--step=best|latest|N] [--weights=raw|ema]
    python -m gmm_vit_jax.evaluate --export=BUNDLE
    ... [--split=test|validation|train] [--config.dataset.FIELD=VALUE ...] [--out=DIR] [--json]

By default a run is evaluated on its own dataset's test split with its best checkpoint,
the one `export` would take; `--config.dataset.*` points it at another dataset of the
same image size, channels and classes (image folders, say). Prints top-1, top-5, the
loss and a per-class accuracy table, and writes metrics.json and confusion.png to
--out (default WORKDIR/evaluation/<split>_step<S>, or evaluation/<bundle>_<split> for a
bundle). With --json the last line printed is one JSON object of the results.

For the same checkpoint and split it gives the accuracy and loss the run logged: the
same eval batches (gmm_vit_jax/data/pipeline.py) through the same forward pass.
"""

import dataclasses
import json
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from flax import nnx

from gmm_vit_jax import cli, config_overrides, console, errors

# Before the data pipeline's imports load TensorFlow (tfds).
console.import_tensorflow_quietly(sys.argv)
from gmm_vit_jax import export, sharding  # noqa: E402
from gmm_vit_jax.augment.basic import normalize  # noqa: E402
from gmm_vit_jax.data.info import dataset_info  # noqa: E402
from gmm_vit_jax.data.pipeline import make_pipeline  # noqa: E402
from gmm_vit_jax.training.checkpoint import restore_run, step_flag  # noqa: E402

TOP_K = 5
SPLITS = ('test', 'validation', 'train')
ANNOTATED_CLASSES = 20  # Confusion matrices up to this size carry their counts.

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Evaluated:
  """What is evaluated: a forward pass over uint8 images and the facts about its model."""

  name: str  # How the console names it: 'RUN step S (raw weights)', 'bundle DIR'.
  config: ml_collections.ConfigDict  # The config it was trained with.
  forward: Callable[[jax.Array], jax.Array]  # uint8 (B, H, W, C) -> (B, classes) logits.
  image_shape: tuple[int, int, int]
  class_names: list[str]
  step: int | None
  default_out: str


def from_run(workdir: str, which: str | int, weights: str) -> Evaluated:
  """The checkpoint `which` of the run in `workdir` (see training/checkpoint.restore_run)."""
  run = restore_run(workdir, which, weights)
  info = dataset_info(run.config.dataset)
  graphdef, state = nnx.split(run.model)

  @jax.jit
  def forward(state, images):
    x = normalize(images, info['mean'], info['std'])
    return nnx.merge(graphdef, state)(x, deterministic=True).astype(jnp.float32)

  names = info['class_names'] or [str(i) for i in range(info['num_classes'])]
  return Evaluated(
    name=f'{workdir} step {run.step} ({weights} weights)',
    config=run.config,
    forward=lambda images: forward(state, images),
    image_shape=(info['image_size'], info['image_size'], info['channels']),
    class_names=list(names),
    step=run.step,
    default_out=os.path.join(
      workdir, 'evaluation', '{split}_step' + str(run.step) + ('_ema' if weights == 'ema' else '')
    ),
  )


def from_bundle(directory: str) -> Evaluated:
  """An inference bundle (gmm_vit_jax/export.py): its serialized forward pass."""
  bundle = export.load(directory)
  forward = jax.jit(bundle.exported.call)
  name = os.path.basename(os.path.normpath(directory))
  return Evaluated(
    name=f'bundle {directory}',
    config=bundle.config,
    forward=lambda images: forward(bundle.params, images),
    image_shape=bundle.image_shape,
    class_names=list(bundle.class_names),
    step=None,
    default_out=os.path.join('evaluation', name + '_{split}'),
  )


def _check_fits(evaluated: Evaluated, config: ml_collections.ConfigDict) -> None:
  """The dataset `config` names must give the images and classes the model was built for."""
  info = dataset_info(config.dataset)
  shape = (info['image_size'], info['image_size'], info['channels'])
  if shape != evaluated.image_shape:
    raise errors.ConfigError(
      f'dataset {config.dataset.name!r} gives {"x".join(map(str, shape))} images; the model '
      f'takes {"x".join(map(str, evaluated.image_shape))}: choose a dataset of that size and '
      'channels.'
    )
  if info['num_classes'] != len(evaluated.class_names):
    raise errors.ConfigError(
      f'dataset {config.dataset.name!r} has {info["num_classes"]} classes; the model '
      f'predicts {len(evaluated.class_names)}.'
    )


def predictions(
  evaluated: Evaluated, config: ml_collections.ConfigDict, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """(N, classes) float32 logits and (N,) int labels of every example of `split`, through
  the eval batches the training loop uses."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size('eval_batch_size', config.eval_batch_size, mesh)
  pipeline = make_pipeline(config, mesh)
  available = (*pipeline.eval_splits, 'train')
  if split not in available:
    raise errors.ConfigError(
      f'--split={split}: this dataset has the splits {", ".join(available)}'
      + (
        ' (a validation split needs --config.dataset.validation=FRACTION or a validation folder)'
        if split == 'validation'
        else ''
      )
      + '.'
    )

  @jax.jit
  def rows(images, labels, index):
    return (images, labels) if index is None else (images[index], labels[index])

  logits, labels = [], []
  for images, y, index, weight in pipeline.eval_batches(split):
    images, y = rows(images, y, index)
    keep = np.asarray(weight) > 0
    logits.append(np.asarray(evaluated.forward(images))[keep])
    labels.append(np.asarray(y)[keep])
  return np.concatenate(logits), np.concatenate(labels)


def scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """top1, top5 (top-k with k = min(5, classes)), loss (mean cross-entropy), the (C, C)
  confusion counts (rows: true class, columns: predicted) and per-class accuracy (NaN for
  a class with no example)."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  k = min(TOP_K, num_classes)
  top_k = np.argsort(-logits, axis=1, kind='stable')[:, :k]
  predicted = np.argmax(logits, axis=1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  per_class_count = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.diag(confusion) / per_class_count
  return dict(
    top1=float(np.mean(predicted == labels)),
    top5=float(np.mean(np.any(top_k == labels[:, None], axis=1))),
    loss=float(-np.mean(log_probs[np.arange(len(labels)), labels])),
    confusion=confusion,
    per_class=per_class,
    per_class_count=per_class_count,
  )


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
  """A matplotlib Figure of the confusion matrix, each row as shares of its true class."""
  classes = len(class_names)
  with np.errstate(invalid='ignore', divide='ignore'):
    shares = confusion / confusion.sum(axis=1, keepdims=True)
  size = min(max(4.5, 0.45 * classes + 2.5), 14.0)
  fig, ax = plt.subplots(figsize=(size + 1.2, size), constrained_layout=True)
  image = ax.imshow(np.nan_to_num(shares), cmap='Blues', vmin=0, vmax=1)
  if classes <= ANNOTATED_CLASSES:
    ticks = np.arange(classes)
    ax.set_xticks(ticks, class_names, rotation=90 if max(map(len, class_names)) > 3 else 0)
    ax.set_yticks(ticks, class_names)
    for (row, col), count in np.ndenumerate(confusion):
      if count:
        ax.text(
          col,
          row,
          str(count),
          ha='center',
          va='center',
          fontsize=8,
          color='white' if shares[row, col] > 0.5 else 'black',
        )
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=ax, shrink=0.8, label='share of the true class')
  return fig


def class_table(class_names: list[str], per_class: np.ndarray, counts: np.ndarray) -> str:
  width = max(len('class'), *map(len, class_names))
  lines = [f'  {"class":<{width}}  accuracy  images']
  for name, accuracy, count in zip(class_names, per_class, counts):
    shown = '       -' if count == 0 else f'{accuracy:8.1%}'
    lines.append(f'  {name:<{width}}  {shown}  {count:6d}')
  return '\n'.join(lines)


def main(argv, overrides: dict[str, str]):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if bool(FLAGS.workdir) == bool(FLAGS.export):
    raise errors.UserError(
      'name what to evaluate: --workdir=RUN (a training run) or '
      '--export=BUNDLE (an inference bundle), one of the two.'
    )
  console.quiet_jax()
  evaluated = (
    from_run(FLAGS.workdir, step_flag(FLAGS.step), FLAGS.weights)
    if FLAGS.workdir
    else from_bundle(FLAGS.export)
  )
  config = config_overrides.apply(evaluated.config, overrides)
  _check_fits(evaluated, config)
  logits, labels = predictions(evaluated, config, FLAGS.split)
  result = scores(logits, labels, len(evaluated.class_names))

  out = epath.Path(FLAGS.out or evaluated.default_out.format(split=FLAGS.split))
  out.mkdir(parents=True, exist_ok=True)
  title = (
    f'Confusion matrix of {evaluated.name}\n{config.dataset.name} {FLAGS.split}, '
    f'{len(labels):,} images: top-1 {result["top1"]:.2%}'
  )
  fig = confusion_figure(result['confusion'], evaluated.class_names, title)
  with (out / 'confusion.png').open('wb') as f:
    fig.savefig(f, format='png', dpi=100)
  per_class = {
    name: (None if count == 0 else float(accuracy))
    for name, accuracy, count in zip(
      evaluated.class_names, result['per_class'], result['per_class_count']
    )
  }
  record = dict(
    top1=result['top1'],
    top5=result['top5'],
    loss=result['loss'],
    split=FLAGS.split,
    dataset=config.dataset.name,
    images=int(len(labels)),
    step=evaluated.step,
    per_class=per_class,
    confusion=result['confusion'].tolist(),
    out=str(out),
  )
  (out / 'metrics.json').write_text(json.dumps(record, indent=2))

  print(f'{evaluated.name} on {config.dataset.name} {FLAGS.split} ({len(labels):,} images)')
  print(
    f'top-1 {result["top1"]:.2%}  top-{min(TOP_K, len(evaluated.class_names))} '
    f'{result["top5"]:.2%}  loss {result["loss"]:.4f}'
  )
  print(class_table(evaluated.class_names, result['per_class'], result['per_class_count']))
  print(f'confusion matrix: {out / "confusion.png"}; all figures: {out / "metrics.json"}')
  if FLAGS.json:
    print(json.dumps({k: v for k, v in record.items() if k != 'confusion'}))


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Training run directory to evaluate.')
  flags.DEFINE_string(
    'export', None, 'Inference bundle directory to evaluate (instead of --workdir).'
  )
  flags.DEFINE_string(
    'step',
    'best',
    "With --workdir, which checkpoint: 'best' (by the run's "
    "selection metric), 'latest', or a step number.",
  )
  flags.DEFINE_enum(
    'weights',
    'raw',
    ['raw', 'ema'],
    'With --workdir, the trained weights or their moving average (runs trained with ema_decay).',
  )
  flags.DEFINE_enum('split', 'test', list(SPLITS), 'Which split of the dataset to evaluate.')
  flags.DEFINE_string('out', None, 'Directory for metrics.json and confusion.png.')
  flags.DEFINE_bool('json', False, 'End with one JSON line of the results.')
  try:
    remaining, config_args = config_overrides.split_argv(sys.argv)
  except errors.UserError as e:
    sys.exit(f'error: {e}')
  cli.run_app(lambda argv: main(argv, config_args), remaining)
