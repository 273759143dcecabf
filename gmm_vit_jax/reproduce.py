"""The GMM paper's table in one command: every (backbone, plain/GMM, dataset) run, then
the table and a bar chart beside the published numbers.

    python -m gmm_vit_jax.reproduce --table=gmm_paper --workdir=runs/paper \
        [--datasets=cifar10,cifar100] [--backbones=vit,swin] [--tiny] [--data_dir=DIR]

Each run trains the config file <backbone>_cifar10.py (plain) or gmm_<backbone>_cifar10.py
of the --configs folder (the repository's configs/) with the dataset as the config
argument, in WORKDIR/<dataset>/<plain|gmm>_<backbone>; like train.py's --config, the files
are read by path, so a copy of the folder with other recipes works the same.
A run whose summary.json says completed is skipped; any other is started, or resumed by
the trainer from its latest checkpoint. The configs are built the same way every time,
so a rerun finds the config its workdir holds. --tiny shrinks every model and run with
the folder's tiny.py: `--datasets=digits --tiny` is the whole loop, offline, on a CPU.

Writes WORKDIR/table.md and WORKDIR/table.png: the final eval accuracy of each run
beside the published top-1 (gmm_vit_jax/published.py) and the difference.
"""

import io
import json
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType

import ml_collections
from absl import app, flags

from gmm_vit_jax import cli, config_files, console, cpu_runtime, errors, storage
from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.published import BACKBONES, DATASETS, PUBLISHED
from gmm_vit_jax.training.run_directory import SUMMARY_FILE

TABLES = ('gmm_paper',)
VARIANTS = ('plain', 'gmm')


Shrink = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def config_file(configs: str, name: str) -> ModuleType:
  """The config file `configs`/`name`.py, run as a module (as train.py's --config runs it)."""
  path = os.path.join(configs, f'{name}.py')
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{path} does not exist: --configs names the folder of the '
                             "config files (the repository's configs/).")
  return config_files.module(path, flag='--configs')


def run_config(configs: str, backbone: str, variant: str, dataset: str, *,
               shrink: Shrink | None = None,
               data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The config of one run; `shrink` (tiny.py's) makes it a toy run."""
  prefix = 'gmm_' if variant == 'gmm' else ''
  config = config_file(configs, f'{prefix}{backbone}_cifar10').get_config(dataset)
  if shrink:
    config = shrink(config)
  if data_dir:
    config.dataset.data_dir = data_dir
  return config


def finished_summary(workdir: str) -> dict | None:
  path = storage.join(workdir, SUMMARY_FILE)
  if not storage.exists(path):
    return None
  summary = json.loads(storage.read_text(path))
  return summary if summary.get('completed') else None


def reproduce(workdir: str, *, datasets, backbones, configs: str = 'configs',
              shrink: Shrink | None = None, data_dir: str | None = None) -> list[dict]:
  """Runs (or skips) every run; returns one row per (dataset, backbone) with accuracies in %."""
  # Imported here, after a command line has had its say on TensorFlow's notices.
  from gmm_vit_jax.training.loop import train_and_evaluate
  for name, chosen, allowed in (('backbones', backbones, BACKBONES),
                                ('datasets', datasets, DATASETS + ('digits',))):
    if not chosen or set(chosen) - set(allowed):
      raise ConfigError(f'--{name}={",".join(chosen)} must name some of {",".join(allowed)}.')
  rows = []
  for dataset in datasets:
    for backbone in backbones:
      row = dict(dataset=dataset, backbone=backbone)
      for variant in VARIANTS:
        run_dir = storage.join(workdir, dataset, f'{variant}_{backbone}')
        summary = finished_summary(run_dir)
        if summary is None:
          logging.info('Training %s %s on %s in %s.', variant, backbone, dataset, run_dir)
          summary = train_and_evaluate(run_config(configs, backbone, variant, dataset,
                                                  shrink=shrink, data_dir=data_dir), run_dir)
        else:
          logging.info('%s is finished; skipped.', run_dir)
        row[variant] = 100.0 * summary['eval_accuracy']
      row['published'] = PUBLISHED.get((backbone, dataset))
      rows.append(row)
  return rows


def _number(value: float | None) -> str:
  return '—' if value is None else f'{value:.2f}'


def _difference(ours: float, published: float | None) -> str:
  return '—' if published is None else f'{ours - published:+.2f}'


def markdown_table(rows: list[dict]) -> str:
  lines = ['| dataset | model | plain | published | difference | GMM | published | difference '
           '| GMM - plain | published |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    base, gmm = r['published'] or (None, None)
    lines.append(
        f"| {r['dataset']} | {r['backbone']} | {r['plain']:.2f} | {_number(base)} | "
        f"{_difference(r['plain'], base)} | {r['gmm']:.2f} | {_number(gmm)} | "
        f"{_difference(r['gmm'], gmm)} | {r['gmm'] - r['plain']:+.2f} | "
        f"{'—' if base is None else f'{gmm - base:+.2f}'} |")
  return '\n'.join(lines) + '\n'


def bar_chart(rows: list[dict], path: str, *, title: str) -> None:
  """One panel per dataset: per backbone, plain and GMM, this run solid beside the published
  number hatched (where there is one); each bar of this run labelled with its accuracy and,
  where published, the difference."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5.0), squeeze=False)
  colours = dict(plain='#4c72b0', gmm='#dd8452')
  names = dict(plain='plain', gmm='GMM')
  for ax, dataset in zip(axes[0], datasets):
    panel = [r for r in rows if r['dataset'] == dataset]
    published = any(r['published'] for r in panel)
    series = [(v, False) for v in VARIANTS]
    if published:
      series = [(v, p) for v in VARIANTS for p in (False, True)]
    width = 0.8 / len(series)
    values = []
    for i, (variant, is_published) in enumerate(series):
      index = VARIANTS.index(variant)
      heights = [(r['published'][index] if r['published'] else float('nan')) if is_published
                 else r[variant] for r in panel]
      values += [h for h in heights if h == h]
      xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(panel))]
      colour = colours[variant]
      bars = ax.bar(xs, heights, width, color='white' if is_published else colour,
                    edgecolor=colour, hatch='//' if is_published else None,
                    label=f"{'published' if is_published else 'this run'}, {names[variant]}")
      if not is_published:
        for bar, r, h in zip(bars, panel, heights):
          text = f'{h:.1f}'
          if r['published']:
            text += f"\n({h - r['published'][index]:+.1f})"
          ax.annotate(text, (bar.get_x() + bar.get_width() / 2, h), ha='center', va='bottom',
                      fontsize=7, xytext=(0, 2), textcoords='offset points')
    ax.set_xticks(range(len(panel)), [r['backbone'] for r in panel])
    ax.set_ylim(max(0.0, min(values) - 10.0), min(100.0, max(values) + 6.0))
    ax.set_title(dataset)
    ax.set_xlabel('backbone')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.grid(axis='y', alpha=0.3)
  handles, labels = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda h: len(h[1]))
  fig.legend(handles, labels, loc='lower center', ncol=len(labels), fontsize=9, frameon=False)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  storage.write_atomically(path, png.getvalue())


def write_table(rows: list[dict], workdir: str, *, tiny_run: bool) -> None:
  kind = 'tiny models (configs/tiny.py)' if tiny_run else 'the paper configs'
  storage.write_atomically(storage.join(workdir, 'table.md'), f'Final eval top-1 (%) of {kind}, '
                           f'beside the published table.\n\n{markdown_table(rows)}')
  title = f'GMM paper table: final eval top-1 of {kind}'
  if any(r['published'] for r in rows):  # Digits has no published number to differ from.
    title += '\n(in brackets: difference from the published number)'
  bar_chart(rows, storage.join(workdir, 'table.png'), title=title)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_jax()
  shrink = config_file(FLAGS.configs, 'tiny').shrink if FLAGS.tiny else None
  # The XLA flags must be set before JAX starts; every run shares the one process.
  cpu_runtime.apply(run_config(FLAGS.configs, FLAGS.backbones[0], 'gmm', FLAGS.datasets[0],
                               shrink=shrink, data_dir=FLAGS.data_dir))
  storage.check_reachable(FLAGS.workdir)
  storage.makedirs(FLAGS.workdir)
  rows = reproduce(FLAGS.workdir, datasets=FLAGS.datasets, backbones=FLAGS.backbones,
                   configs=FLAGS.configs, shrink=shrink, data_dir=FLAGS.data_dir)
  write_table(rows, FLAGS.workdir, tiny_run=FLAGS.tiny)
  print(markdown_table(rows))


if __name__ == '__main__':
  flags.DEFINE_enum('table', 'gmm_paper', TABLES, 'Which published table.')
  flags.DEFINE_string('workdir', None, 'Where each run and the table go.')
  flags.DEFINE_list('datasets', list(DATASETS), 'Datasets (columns of the table), or digits.')
  flags.DEFINE_list('backbones', list(BACKBONES), 'Backbones (rows of the table).')
  flags.DEFINE_string('configs', 'configs', 'The folder of the config files: '
                      '[gmm_]<backbone>_cifar10.py, and tiny.py for --tiny.')
  flags.DEFINE_bool('tiny', False, 'Tiny models and short runs (the folder\'s tiny.py).')
  flags.DEFINE_string('data_dir', None, 'dataset.data_dir of every run (Tiny-ImageNet\'s '
                      'folder, or a tfds data dir with prepared datasets).')
  flags.mark_flags_as_required(['workdir'])
  logging.getLogger().setLevel(logging.INFO)
  console.import_tensorflow_quietly(sys.argv)
  cli.run_app(main)
