"""The benchmark commands run and report what they promise."""

import json
import os
import subprocess
import sys

from gmm_vit_jax.benchmark import peak_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True,
                        check=True).stdout


def test_benchmark_prints_one_json_line():
  out = run('gmm_vit_jax.benchmark', '--config=tests/tiny_config.py', '--steps=2', '--warmup=1',
            '--json')
  result = json.loads(out.strip().splitlines()[-1])
  assert result['train_images_per_s'] > 0 and result['synthetic_train_images_per_s'] > 0
  assert result['eval_images_per_s'] > 0 and result['flops_per_step'] > 0
  assert 0 < result['dispatch_fraction'] < 1
  assert result['mfu'] is None  # No peak is known for a CPU.


def test_torch_comparison_reports_both_sides():
  out = run('gmm_vit_jax.benchmarks.torch_compare', '--config=tests/tiny_config.py',
            '--batch_size=16', '--steps=2', '--repeats=1')
  lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(('jax', 'py'))}
  assert set(lines) == {'jax', 'pytorch'}
  assert float(lines['pytorch'].split()[-2].replace(',', '')) > 0


def test_peak_table_matches_device_kinds():
  assert peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4e12
  assert peak_flops('NVIDIA H100 PCIe', 'float32') == 51e12
  assert peak_flops('TPU v5 lite', 'bfloat16') == 197e12
  assert peak_flops('cpu', 'float32') is None
