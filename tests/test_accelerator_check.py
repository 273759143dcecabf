"""The accelerator check's plumbing, in its cheap CPU mode."""

import json
import os
import pathlib
import platform
import subprocess
import sys

from gmm_vit_jax.benchmarks import accelerator_check
from gmm_vit_jax.benchmarks.levers import VARIANTS

ROOT = pathlib.Path(__file__).parents[1]


def test_pinned_jax_version_is_the_requirements_pin():
  text = (ROOT / 'requirements.txt').read_text()
  assert f'jax=={accelerator_check.pinned_jax_version()}\n' in text


def test_cheap_mode_writes_every_section(tmp_path):
  out = tmp_path / 'check.json'
  done = subprocess.run(
    [sys.executable, '-m', 'gmm_vit_jax.benchmarks.accelerator_check', '--cheap', f'--out={out}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['cheap'] and 'install' not in report
  assert report['devices']['result']['backend'] == 'cpu'
  assert len(report['speed']) == 1 and len(report['torch']) == 1
  speed = report['speed'][0]['result']
  assert speed['model'] == 'vit' and speed['mask'] == 'gmm'
  for key in (
    'train_images_per_s',
    'synthetic_train_images_per_s',
    'eval_images_per_s',
    'flops_per_step',
  ):
    assert speed[key] > 0, key
  assert speed['mfu'] is None  # No peak is known for a CPU.
  if platform.libc_ver()[0] == 'glibc':  # The paper config keeps step memory: steps run inline.
    assert speed['dispatch_fraction'] is None
  assert report['two_epochs']['result']['dtype'] == 'float32'
  entries = accelerator_check.json_entries(report)
  assert len(entries) == 5
  failed = [e for e in entries if e['returncode'] != 0]
  assert not failed, failed
  assert '0 step(s) failed or skipped' in done.stdout

  torch = report['torch'][0]['output']
  assert 'batch 8, float32' in torch
  rates = {
    line.split()[0]: line.split()[-2]
    for line in torch.splitlines()
    if line.startswith(('jax', 'pytorch'))
  }
  assert set(rates) == {'jax', 'pytorch'} and float(rates['pytorch'].replace(',', '')) > 0

  rows = {}  # The levers table: variant, images/s, vs all on, dispatch, step MiB.
  for line in report['levers']['output'].splitlines():
    name = next((v for v in VARIANTS if line.startswith(v)), None)
    if name:
      rate, _, _, memory = line[len(name) :].split()
      rows[name] = (float(rate), float(memory))
  assert set(rows) == {'all on', 'no donation'}
  assert all(rate > 0 for rate, _ in rows.values())
  assert rows['no donation'][1] > rows['all on'][1]


def test_commands_past_the_budget_are_skipped_and_failures_recorded():
  skipped = accelerator_check.run(
    [sys.executable, '-c', 'print(1)'], 60, accelerator_check.Budget(1.0)
  )
  assert skipped['returncode'] == 'skipped'
  failed = accelerator_check.run(
    [sys.executable, '-c', 'import sys; print("x"); sys.exit("broken")'], 60
  )
  assert failed['returncode'] == 1 and 'broken' in failed['error'] and failed['output'] == 'x'
  parsed = accelerator_check.run([sys.executable, '-c', 'print("{\\"a\\": 1}")'], 60)
  assert parsed['returncode'] == 0 and parsed['result'] == {'a': 1}
