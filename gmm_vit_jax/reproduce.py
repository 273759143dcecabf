"""The GMM paper's table in one command: every (backbone, plain/GMM, dataset) run, then
the table and a bar chart beside the published numbers.

    python -m gmm_vit_jax.reproduce --table=gmm_paper --workdir=runs/paper \
        [--datasets=cifar10,cifar100] [--backbones=vit,swin] [--seeds=N] \
        [--tiny | --shrink=quickstart_size] [--data_dir=DIR]

Each run trains the config file <backbone>_cifar10.py (plain) or gmm_<backbone>_cifar10.py
of the --configs folder (the repository's configs/) with the dataset as the config
argument, in WORKDIR/<dataset>/<plain|gmm>_<backbone>[_seed<i>]; like train.py's --config,
the files are read by path, so a copy of the folder with other recipes works the same.
--seeds=N trains each cell N times, with config.seed + i for i < N.
A run whose summary.json says completed is skipped; any other is started, or resumed by
the trainer from its latest checkpoint. The configs are built the same way every time,
so a rerun finds the config its workdir holds. --shrink names a file of the folder whose
shrink(config) resizes every run: tiny.py (--tiny) the tiny models of the tests,
quickstart_size.py every backbone at the quick start's size; `--datasets=digits --tiny`
is the whole loop, offline, on a CPU.

Writes WORKDIR/table.md and WORKDIR/table.png: each cell's best eval top-1 (the highest
over the run's evaluations on the test split, what the reference reports as best_acc1)
and final one, mean ± standard deviation over seeds, the paired GMM - plain difference,
and the published top-1 beside the best.
"""

import io
import json
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType

import ml_collections
import numpy as np
from absl import app, flags

from gmm_vit_jax import cli, config_files, console, cpu_runtime, errors, storage
from gmm_vit_jax.errors import ConfigError
from gmm_vit_jax.published import BACKBONES, DATASETS, PUBLISHED
from gmm_vit_jax.training.run_directory import SUMMARY_FILE

TABLES = ('gmm_paper',)
VARIANTS = ('plain', 'gmm')


Shrink = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def config_file(configs: str, name: str, needs: str = 'get_config') -> ModuleType:
  """The config file `configs`/`name`.py, run as a module (as train.py's --config runs it);
  `needs`: the function it must define."""
  path = os.path.join(configs, f'{name}.py')
  if not os.path.isfile(path):
    raise errors.ConfigError(
      f'{path} does not exist: --configs names the folder of the '
      "config files (the repository's configs/)."
    )
  return config_files.module(path, flag='--configs', needs=needs)


def run_config(
  configs: str,
  backbone: str,
  variant: str,
  dataset: str,
  *,
  shrink: Shrink | None = None,
  data_dir: str | None = None,
) -> ml_collections.ConfigDict:
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


def run_directory(workdir: str, dataset: str, variant: str, backbone: str, seed: int) -> str:
  """WORKDIR/<dataset>/<variant>_<backbone>, with _seed<i> for the i-th seed after the first."""
  name = f'{variant}_{backbone}' + (f'_seed{seed}' if seed else '')
  return storage.join(workdir, dataset, name)


def reproduce(
  workdir: str,
  *,
  datasets,
  backbones,
  configs: str = 'configs',
  shrink: Shrink | None = None,
  data_dir: str | None = None,
  seeds: int = 1,
) -> list[dict] | None:
  """Runs (or skips) every run; returns one row per (dataset, backbone), or None where a
  run was stopped (a signal; rerun to resume).

  Each cell is trained `seeds` times, with config.seed + i for i < `seeds`, backbone by
  backbone (every seed of one before the next), plain and GMM of a seed side by side.
  A row holds, per variant, the lists over seeds of the final and the best eval top-1 (%).
  """
  # Imported here, after a command line has had its say on TensorFlow's notices.
  from gmm_vit_jax.training.loop import train_and_evaluate

  for name, chosen, allowed in (
    ('backbones', backbones, BACKBONES),
    ('datasets', datasets, DATASETS + ('digits',)),
  ):
    if not chosen or set(chosen) - set(allowed):
      raise ConfigError(f'--{name}={",".join(chosen)} must name some of {",".join(allowed)}.')
  if seeds < 1:
    raise errors.UserError(f'--seeds={seeds} must be at least 1.')
  rows = []
  for dataset in datasets:
    for backbone in backbones:
      row = dict(dataset=dataset, backbone=backbone)
      for variant in VARIANTS:
        row[variant] = dict(final=[], best=[])
      for seed in range(seeds):
        for variant in VARIANTS:
          run_dir = run_directory(workdir, dataset, variant, backbone, seed)
          summary = finished_summary(run_dir)
          if summary is None:
            config = run_config(
              configs, backbone, variant, dataset, shrink=shrink, data_dir=data_dir
            )
            config.seed += seed
            logging.info(
              'Training %s %s on %s, seed %d, in %s.',
              variant,
              backbone,
              dataset,
              config.seed,
              run_dir,
            )
            summary = train_and_evaluate(config, run_dir)
            if not summary['completed']:
              return None
          else:
            logging.info('%s is finished; skipped.', run_dir)
          row[variant]['final'].append(100.0 * summary['eval_accuracy'])
          row[variant]['best'].append(100.0 * summary['best_eval_accuracy'])
      row['published'] = PUBLISHED.get((backbone, dataset))
      rows.append(row)
  return rows


def _spread(values) -> str:
  """The mean of `values` and, over two or more, their standard deviation (n - 1)."""
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}'


def paired_differences(row: dict, metric: str) -> list[float]:
  """GMM - plain of `metric` ('best' or 'final'), seed by seed."""
  return [g - p for g, p in zip(row['gmm'][metric], row['plain'][metric])]


def markdown_table(rows: list[dict]) -> str:
  """Best and final top-1 of each variant (mean ± standard deviation over seeds), the paired
  GMM - plain difference and, where a row is published, the paper's numbers beside the best
  one (the figure the reference code reports)."""
  published = any(r['published'] for r in rows)
  header = ['dataset', 'model', 'plain best', 'plain final']
  header += ['plain, paper'] if published else []
  header += ['GMM best', 'GMM final']
  header += ['GMM, paper'] if published else []
  header += ['GMM - plain, best', 'GMM - plain, final']
  header += ['GMM - plain, paper'] if published else []
  lines = ['| ' + ' | '.join(header) + ' |', '|---|---|' + '---:|' * (len(header) - 2)]
  for r in rows:
    cells = [r['dataset'], r['backbone']]
    for index, variant in enumerate(VARIANTS):
      best = _spread(r[variant]['best'])
      if r['published']:
        best += f' ({np.mean(r[variant]["best"]) - r["published"][index]:+.2f})'
      cells += [best, _spread(r[variant]['final'])]
      if published:
        cells.append(f'{r["published"][index]:.2f}' if r['published'] else '—')
    cells += [
      _signed_spread(paired_differences(r, 'best')),
      _signed_spread(paired_differences(r, 'final')),
    ]
    if published:
      cells.append(f'{r["published"][1] - r["published"][0]:+.2f}' if r['published'] else '—')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _signed_spread(values) -> str:
  spread = _spread(values)
  return spread if spread.startswith('-') else f'+{spread}'


def caption(rows: list[dict], kind: str) -> str:
  seeds = len(rows[0]['plain']['best'])
  text = (
    f"Top-1 (%) on the test split of {kind}. best: the highest of the run's evaluations "
    '(the figure the reference code prints and reports as best_acc1); final: its last '
    'evaluation.'
  )
  if seeds > 1:
    text += (
      f' Each cell: mean ± standard deviation over {seeds} seeds (config.seed + 0 to '
      f'{seeds - 1}); GMM - plain: the difference of the runs of the same seed, then its '
      'mean ± standard deviation.'
    )
  if any(r['published'] for r in rows):
    text += (
      ' paper: the published top-1 (gmm_vit_jax/published.py), the best_acc1 of the '
      "reference's run, so it compares with best: in brackets after a best, best minus "
      'paper.'
    )
  return text


def bar_chart(rows: list[dict], path: str, *, title: str) -> None:
  """Per dataset, two panels: above, per backbone, the best top-1 of plain and GMM (bars from
  zero at the mean over seeds, each seed a dot, the paper's number hatched beside where
  there is one); below, the GMM - plain difference of each seed's pair, with its mean."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  fig, axes = plt.subplots(
    2,
    len(datasets),
    figsize=(6.5 * len(datasets), 7.5),
    squeeze=False,
    gridspec_kw=dict(height_ratios=(3, 2)),
  )
  colours = dict(plain='#4c72b0', gmm='#dd8452')
  names = dict(plain='plain', gmm='GMM')
  seeds = len(rows[0]['plain']['best'])
  for column, dataset in enumerate(datasets):
    ax, below = axes[0, column], axes[1, column]
    panel = [r for r in rows if r['dataset'] == dataset]
    published = any(r['published'] for r in panel)
    series = [(v, p) for v in VARIANTS for p in ((False, True) if published else (False,))]
    width = 0.8 / len(series)
    for i, (variant, is_published) in enumerate(series):
      index = VARIANTS.index(variant)
      xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(panel))]
      colour = colours[variant]
      if is_published:
        heights = [r['published'][index] if r['published'] else np.nan for r in panel]
        ax.bar(
          xs,
          heights,
          width,
          color='white',
          edgecolor=colour,
          hatch='//',
          label=f'paper, {names[variant]}',
        )
        continue
      heights = [np.mean(r[variant]['best']) for r in panel]
      bars = ax.bar(
        xs,
        heights,
        width,
        color=colour,
        alpha=0.85,
        label=f'this run, {names[variant]}' + (f' (mean of {seeds} seeds)' if seeds > 1 else ''),
      )
      if seeds > 1:
        for x, r in zip(xs, panel):
          ax.scatter(
            [x] * seeds,
            r[variant]['best'],
            s=9,
            color='black',
            zorder=3,
            label='one seed' if x == xs[0] and variant == 'plain' else None,
          )
      for bar, h in zip(bars, heights):
        ax.annotate(
          f'{h:.1f}',
          (bar.get_x() + bar.get_width() / 2, h),
          ha='center',
          va='bottom',
          fontsize=7,
          xytext=(0, 2),
          textcoords='offset points',
        )
    ax.set_xticks(range(len(panel)), [r['backbone'] for r in panel])
    ax.set_ylim(0.0, 105.0)
    ax.set_title(dataset)
    ax.set_ylabel('best top-1 accuracy (%)')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(
      loc='upper center',
      bbox_to_anchor=(0.5, -0.07),
      ncol=len(series) + 1,
      fontsize=8,
      frameon=False,
    )
    below.axhline(0.0, color='grey', linewidth=0.8)
    for x, r in enumerate(panel):
      values = paired_differences(r, 'best')
      below.scatter(
        [x] * len(values),
        values,
        s=12,
        color=colours['gmm'],
        zorder=3,
        label=("one seed's pair" if seeds > 1 else 'this run') if x == 0 else None,
      )
      if seeds > 1:
        below.hlines(
          np.mean(values),
          x - 0.25,
          x + 0.25,
          color='black',
          linewidth=1.5,
          label=f'mean of {seeds}' if x == 0 else None,
        )
      below.annotate(
        f'{np.mean(values):+.1f}',
        (x + (0.27 if seeds > 1 else 0.06), np.mean(values)),
        va='center',
        fontsize=7,
      )
    paper = [
      (x, r['published'][1] - r['published'][0]) for x, r in enumerate(panel) if r['published']
    ]
    if paper:
      below.scatter(
        *zip(*paper),
        s=30,
        marker='D',
        facecolor='white',
        edgecolor='black',
        zorder=3,
        label='paper',
      )
    below.set_xticks(range(len(panel)), [r['backbone'] for r in panel])
    below.set_xlim(-0.5, len(panel) - 0.5)
    below.set_xlabel('backbone')
    below.set_ylabel('GMM - plain,\nbest top-1 (points)')
    below.grid(axis='y', alpha=0.3)
    below.legend(loc='best', fontsize=8, framealpha=0.9)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout(h_pad=2.5)
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=120)
  plt.close(fig)
  storage.write_atomically(path, png.getvalue())


def write_table(rows: list[dict], workdir: str, *, kind: str) -> None:
  """WORKDIR/table.md and table.png of `rows`; `kind` names the models, e.g. 'the paper
  configs'."""
  storage.write_atomically(
    storage.join(workdir, 'table.md'), f'{caption(rows, kind)}\n\n{markdown_table(rows)}'
  )
  seeds = len(rows[0]['plain']['best'])
  title = f'GMM paper table: best test top-1 of {kind}'
  if seeds > 1:
    title += f', {seeds} seeds'
  bar_chart(rows, storage.join(workdir, 'table.png'), title=title)


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_jax()
  size = 'tiny' if FLAGS.tiny else FLAGS.shrink
  shrink = config_file(FLAGS.configs, size, needs='shrink').shrink if size else None
  # The XLA flags must be set before JAX starts; every run shares the one process.
  cpu_runtime.apply(
    run_config(
      FLAGS.configs,
      FLAGS.backbones[0],
      'gmm',
      FLAGS.datasets[0],
      shrink=shrink,
      data_dir=FLAGS.data_dir,
    )
  )
  storage.check_reachable(FLAGS.workdir)
  storage.makedirs(FLAGS.workdir)
  rows = reproduce(
    FLAGS.workdir,
    datasets=FLAGS.datasets,
    backbones=FLAGS.backbones,
    configs=FLAGS.configs,
    shrink=shrink,
    data_dir=FLAGS.data_dir,
    seeds=FLAGS.seeds,
  )
  if rows is None:
    return errors.EXIT_STOPPED
  write_table(
    rows,
    FLAGS.workdir,
    kind=f'the models of {os.path.join(FLAGS.configs, size)}.py' if size else 'the paper configs',
  )
  print(markdown_table(rows))


if __name__ == '__main__':
  flags.DEFINE_enum('table', 'gmm_paper', TABLES, 'Which published table.')
  flags.DEFINE_string('workdir', None, 'Where each run and the table go.')
  flags.DEFINE_list('datasets', list(DATASETS), 'Datasets (columns of the table), or digits.')
  flags.DEFINE_list('backbones', list(BACKBONES), 'Backbones (rows of the table).')
  flags.DEFINE_string(
    'configs',
    'configs',
    'The folder of the config files: [gmm_]<backbone>_cifar10.py, and tiny.py for --tiny.',
  )
  flags.DEFINE_bool(
    'tiny', False, "Tiny models and short runs (the folder's tiny.py); the same as --shrink=tiny."
  )
  flags.DEFINE_string(
    'shrink',
    None,
    'A config file of the --configs folder whose '
    'shrink(config) resizes every run: tiny, or quickstart_size (every '
    "backbone at the quick start's size, for the digits).",
  )
  flags.DEFINE_integer('seeds', 1, 'How many times each cell is trained, with config.seed + i.')
  flags.DEFINE_string(
    'data_dir',
    None,
    "dataset.data_dir of every run (Tiny-ImageNet's "
    'folder, or a tfds data dir with prepared datasets).',
  )
  flags.mark_flags_as_required(['workdir'])
  logging.getLogger().setLevel(logging.INFO)
  console.import_tensorflow_quietly(sys.argv)
  cli.run_app(main)
