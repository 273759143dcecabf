"""Reruns the quick-start figures README presents and prints its table, as ranges.

    python -m gmm_vit_jax.benchmarks.readme [--runs=3] [--rows=quickstart,8_devices,hvit] \
        [--install_seconds=S]

Each run is `python train.py --config=CONFIG --workdir=<fresh directory>`, as a user
types it, in a fresh process. For every row the table gives, as min to max over the
runs: the final and the best test accuracy, the wall time of the command start to end,
and the training rate (steps/s and images/s, compilation and evaluation left out, from
the run's summary.json). Installation is not part of it: time `pip install -r
requirements.txt` yourself and pass the seconds as --install_seconds to have them
printed beside the table. The machine line names the CPU, its cores and the devices.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from gmm_vit_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# README's rows: (name, config path, extra environment, what README calls the row).
ROWS = {
  'quickstart': ('configs/quickstart.py', {}, '`configs/quickstart.py`, 1 CPU device'),
  '8_devices': (
    'configs/quickstart.py',
    {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'},
    'same, `XLA_FLAGS=--xla_force_host_platform_device_count=8`',
  ),
  'hvit': ('configs/quickstart_hvit.py', {}, '`configs/quickstart_hvit.py` (GMM-HViT)'),
}

flags.DEFINE_integer('runs', 3, 'Runs per row.')
flags.DEFINE_list('rows', list(ROWS), f'Rows to run, from {list(ROWS)}.')
flags.DEFINE_float(
  'install_seconds',
  None,
  'Measured `pip install -r requirements.txt` time, printed beside the table.',
)
FLAGS = flags.FLAGS


def train_once(config: str, env: dict) -> dict:
  """One train.py run in a fresh workdir: its summary plus the command's wall time."""
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    done = subprocess.run(
      [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}'],
      cwd=ROOT,
      env={**os.environ, **env},
      capture_output=True,
      text=True,
      check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
      raise cli.child_failed(f'train.py --config={config}', done)
    with open(os.path.join(workdir, 'summary.json')) as f:
      return dict(json.load(f), command_seconds=seconds)


def span(values, fmt: str) -> str:
  """'a' when every run gave the same figure, else 'min to max'."""
  low, high = fmt.format(min(values)), fmt.format(max(values))
  return low if low == high else f'{low} to {high}'


def table_row(label: str, runs: list[dict]) -> str:
  pick = lambda key: [r[key] for r in runs]
  accuracy = span([100 * a for a in pick('eval_accuracy')], '{:.1f}%')
  best = span([100 * a for a in pick('best_eval_accuracy')], '{:.1f}%')
  return (
    f'| {label} | {accuracy} (best {best}) | {span(pick("command_seconds"), "{:.0f} s")} | '
    f'{span(pick("train_steps_per_s"), "{:.1f}")} steps/s '
    f'({span(pick("train_images_per_s"), "{:,.0f}")} images/s) |'
  )


def machine() -> str:
  name = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  return f'{name}, {os.cpu_count()} cores, {platform.system()}, load average {load:.1f} at the end'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = [row for row in FLAGS.rows if row not in ROWS]
  if unknown:
    raise app.UsageError(f'--rows: {unknown} are not rows; choose from {list(ROWS)}.')
  lines = []
  for row in FLAGS.rows:
    config, env, label = ROWS[row]
    runs = []
    for i in range(FLAGS.runs):
      runs.append(train_once(config, env))
      print(
        f'{row} run {i + 1}/{FLAGS.runs}: {runs[-1]["eval_accuracy"]:.4f} accuracy, '
        f'{runs[-1]["command_seconds"]:.0f} s',
        file=sys.stderr,
        flush=True,
      )
    lines.append(table_row(label, runs))
  print(f'{FLAGS.runs} runs per row, {datetime.date.today().isoformat()}, {machine()}')
  if FLAGS.install_seconds is not None:
    print(
      f'install (pip install -r requirements.txt, measured separately): '
      f'{FLAGS.install_seconds:.0f} s'
    )
  print()
  print('| run | test accuracy | wall time (command start to end) | training rate |')
  print('|---|---|---|---|')
  print('\n'.join(lines))


if __name__ == '__main__':
  cli.run_app(main)
