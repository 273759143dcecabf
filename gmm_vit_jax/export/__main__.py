"""python -m gmm_vit_jax.export --workdir=RUN --out=DIR [--step=best|latest|N] [--weights=ema]

turns a training run's checkpoint into an inference bundle (`gmm_vit_jax.export`): by
default the best one, and its raw weights, or with --weights=ema their moving average
(runs trained with ema_decay). --out must be a new or empty directory, or a bundle,
which only --overwrite replaces; anything else is refused before anything is written.
The library part of the package needs no trainer; this command reads the run with it.
"""

from absl import app, flags

from gmm_vit_jax import cli, console, storage
from gmm_vit_jax.export import check_out, save_bundle
from gmm_vit_jax.training.checkpoint import restore_run, step_flag

flags.DEFINE_string('workdir', None, 'Training run directory to export.', required=True)
flags.DEFINE_string('out', None, 'Bundle directory to write.', required=True)
flags.DEFINE_string(
  'step',
  'best',
  "Which checkpoint: 'best' (by eval accuracy, or by "
  "validation accuracy for runs that hold a validation split out), 'latest', "
  'or a step number.',
)
flags.DEFINE_bool('overwrite', False, 'Replace the bundle that --out holds already.')
flags.DEFINE_enum(
  'weights',
  'raw',
  ['raw', 'ema'],
  'The trained weights, or their moving average (runs trained with ema_decay).',
)
flags.DEFINE_enum(
  'format', 'jax', ['jax', 'onnx'], "'onnx' also writes model.onnx into the bundle (docs/onnx.md)."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  console.quiet_jax()
  workdir = flags.FLAGS.workdir
  check_out(flags.FLAGS.out, flags.FLAGS.overwrite)
  run = restore_run(workdir, step_flag(flags.FLAGS.step), weights=flags.FLAGS.weights)
  metrics = run.metrics or {}
  prefix = 'eval_ema' if flags.FLAGS.weights == 'ema' else 'eval'
  source = dict(
    workdir=storage.absolute(workdir),
    step=run.step,
    weights=flags.FLAGS.weights,
    eval_accuracy=metrics.get(f'{prefix}_accuracy'),
    eval_loss=metrics.get(f'{prefix}_loss'),
  )
  save_bundle(run.model, run.config, flags.FLAGS.out, source=source)
  if flags.FLAGS.format == 'onnx':
    from gmm_vit_jax import onnx_export  # Imports the converter only when asked for.

    print(f'ONNX model written to {onnx_export.write_onnx(flags.FLAGS.out)}')
  accuracy = (
    'not evaluated'
    if source['eval_accuracy'] is None
    else f'eval accuracy {source["eval_accuracy"]:.4f}'
  )
  print(f'bundle of step {run.step} ({accuracy}) written to {flags.FLAGS.out}')


if __name__ == '__main__':
  cli.run_app(main)
