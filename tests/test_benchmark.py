"""The benchmark commands run and report what they promise.

The accelerator check's cheap mode (test_accelerator_check.py) runs the others: the speed
benchmark on a paper config, the float32 PyTorch comparison and the levers table.
"""

import json
import os
import subprocess
import sys

from gmm_vit_jax.benchmarks.speed import peak_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  return subprocess.run(
    [sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout


def test_benchmark_prints_one_json_line():
  out = run(
    'gmm_vit_jax.benchmarks.speed',
    '--config=tests/tiny_config.py',
    '--steps=2',
    '--warmup=1',
    '--json',
  )
  result = json.loads(out.strip().splitlines()[-1])
  assert result['train_images_per_s'] > 0 and result['synthetic_train_images_per_s'] > 0
  assert result['eval_images_per_s'] > 0 and result['flops_per_step'] > 0
  assert 0 < result['dispatch_fraction'] < 1
  assert result['mfu'] is None  # No peak is known for a CPU.


def test_torch_comparison_reports_both_sides_in_bfloat16():
  # float32 runs in the accelerator check's cheap mode (test_accelerator_check.py).
  dtype = 'bfloat16'
  out = run(
    'gmm_vit_jax.benchmarks.torch_compare',
    '--config=tests/tiny_config.py',
    '--batch_size=16',
    '--steps=2',
    '--repeats=1',
    f'--dtype={dtype}',
  )
  assert f'batch 16, {dtype}' in out
  lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(('jax', 'py'))}
  assert set(lines) == {'jax', 'pytorch'}
  assert float(lines['pytorch'].split()[-2].replace(',', '')) > 0


def test_peak_table_matches_device_kinds():
  assert peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4e12
  assert peak_flops('NVIDIA H100 PCIe', 'float32') == 51e12
  assert peak_flops('TPU v5 lite', 'bfloat16') == 197e12
  assert peak_flops('cpu', 'float32') is None


def test_op_benchmark_prints_a_row_per_op_with_positive_times():
  out = run('gmm_vit_jax.benchmarks.ops', '--batch_size=2', '--repeats=1')
  names = ('GELU', 'depthwise', 'MLP', 'dense', 'bias', 'LayerNorm', 'GMM core')
  rows = [line for line in out.splitlines() if line.startswith(names)]
  assert len(rows) == 8
  for row in rows:
    library_ms, ours_ms, speedup = row.split()[-3:]
    assert float(library_ms) > 0 and float(ours_ms) > 0 and speedup.endswith('x')


def test_readme_table_gives_each_figure_as_a_range_over_the_runs():
  from gmm_vit_jax.benchmarks.readme import table_row

  runs = [
    dict(
      eval_accuracy=0.975,
      best_eval_accuracy=0.98,
      command_seconds=80.4,
      train_steps_per_s=24.0,
      train_images_per_s=1536.0,
    ),
    dict(
      eval_accuracy=0.9806,
      best_eval_accuracy=0.98,
      command_seconds=95.0,
      train_steps_per_s=20.04,
      train_images_per_s=1282.6,
    ),
  ]
  assert table_row('x', runs) == (
    '| x | 97.5% to 98.1% (best 98.0%) | 80 s to 95 s | '
    '20.0 to 24.0 steps/s (1,283 to 1,536 images/s) |'
  )
