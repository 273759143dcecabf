"""Everything to measure on a GPU or TPU, in one command, into one JSON file.

    python -m gmm_vit_jax.benchmarks.accelerator_check --out=accelerator_check.json
    python -m gmm_vit_jax.benchmarks.accelerator_check --cheap --out=/tmp/check.json  # CPU

It stops starting commands when --budget_s (570 s: under 10 minutes on one H100 or
H200 with the machine's start-up) runs out, and marks the rest skipped; the most wanted
figures come first. In order:
1. install: pip installs JAX's CUDA wheel at the version requirements.txt pins
   (`jax[cuda13]==<pin>`; --install=none skips it, --install=tpu takes `jax[tpu]`);
   every later step runs in a fresh process, so it sees the new backend.
2. speed: the speed benchmark (SPEED_MODULE) for every backbone's GMM config, in bfloat16
   and then in float32;
3. torch: the PyTorch comparison of the GMM-ViT (benchmarks/torch_compare.py), eager and
   torch.compile in one run per precision, bfloat16 and float32;
4. two_epochs: the GMM-ViT train step run for 2 epochs of CIFAR-10's length (2 x 1,171
   steps of 128) on random CIFAR-shaped data, through the speed benchmark;
5. levers: each speed lever switched off in turn (benchmarks/levers.py) on the GMM-ViT.
Each entry records the command, its exit status ('timeout', 'skipped' where the budget
ran out), wall seconds, and its output: the JSON line the tool prints, or its printed
table, and the tail of its errors. A step that fails does not stop the others. --cheap
runs the same plumbing on a CPU: one tiny backbone, float32, two steps, the levers table
with donation on and off, no install (the test suite runs it).
"""

import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

from absl import app, flags

from gmm_vit_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The speed benchmark's module, in one place: where `python -m` finds it.
SPEED_MODULE = 'gmm_vit_jax.benchmarks.speed'
BACKBONES = ('vit', 'swin', 'cait', 'pit', 't2t')
DTYPES = ('bfloat16', 'float32')
INSTALLS = ('cuda13', 'tpu', 'none')
CIFAR_STEPS_PER_EPOCH = 1171  # 50,000 images x 3 passes / batch 128 (docs/design.md, "The recipe").
# Per step of the check, seconds: together well under 10 minutes on one H100/H200.
TIMEOUT_S = dict(install=240, speed=120, torch=180, two_epochs=180, levers=300)
# --cheap: a one-layer ViT 16 wide and two steps, which a CPU runs in seconds.
CHEAP_OVERRIDES = (
  '--config.model.depth=1',
  '--config.model.dim=16',
  '--config.model.num_heads=2',
  '--config.model.head_dim=8',
  '--config.eval_batch_size=8',
)

# A command given less time than this would only time out.
MIN_START_S = 20

FLAGS = flags.FLAGS


def pinned_jax_version() -> str:
  """The jax version requirements.txt pins."""
  text = (ROOT / 'requirements.txt').read_text()
  found = re.search(r'^jax==(\S+)$', text, re.MULTILINE)
  if not found:
    raise ValueError('requirements.txt pins no jax version (a line jax==X.Y.Z).')
  return found.group(1)


class Budget:
  """Seconds left to the whole check."""

  def __init__(self, seconds: float):
    self.deadline = time.perf_counter() + seconds

  def left(self) -> float:
    return self.deadline - time.perf_counter()


def run(args: list[str], timeout: float, budget: Budget | None = None) -> dict:
  """Runs a command from the repository root; its last JSON line, or its output's tail.

  Not started where the budget has under MIN_START_S left; stopped where it runs out.
  """
  if budget is not None:
    if budget.left() < MIN_START_S:
      return dict(command=' '.join(args), returncode='skipped', seconds=0.0)
    timeout = min(timeout, budget.left())
  start = time.perf_counter()
  try:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    code, out, err = done.returncode, done.stdout, done.stderr
  except subprocess.TimeoutExpired as e:
    code, out, err = 'timeout', e.stdout or '', e.stderr or ''
    out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
  entry = dict(
    command=' '.join(args), returncode=code, seconds=round(time.perf_counter() - start, 2)
  )
  lines = [line for line in out.strip().splitlines() if line.strip()]
  parsed = None
  if lines:
    try:
      parsed = json.loads(lines[-1])
    except json.JSONDecodeError:
      pass
  if parsed is not None:
    entry['result'] = parsed
  else:
    entry['output'] = '\n'.join(lines[-20:])
  if code != 0:
    entry['error'] = err[-3000:]
  return entry


def speed(config: str, dtype: str, steps: int, extra: tuple[str, ...]) -> list[str]:
  return [
    sys.executable,
    '-m',
    SPEED_MODULE,
    f'--config={config}',
    f'--config.model.dtype={dtype}',
    f'--steps={steps}',
    '--json',
    *extra,
  ]


def check(*, cheap: bool, install: str, budget_s: float) -> dict:
  """Runs every step (module docstring); returns the JSON-ready report."""
  budget = Budget(budget_s)
  backbones = BACKBONES[:1] if cheap else BACKBONES
  dtypes = ('float32',) if cheap else DTYPES
  extra = CHEAP_OVERRIDES if cheap else ()
  batch = ('--batch_size=8',) if cheap else ()
  steps = 2 if cheap else 20
  report = dict(
    cheap=cheap,
    budget_s=budget_s,
    python=platform.python_version(),
    machine=platform.machine(),
    started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
  )
  if install != 'none':
    report['install'] = run(
      [sys.executable, '-m', 'pip', 'install', '-U', f'jax[{install}]=={pinned_jax_version()}'],
      TIMEOUT_S['install'],
      budget,
    )
  report['devices'] = run(
    [
      sys.executable,
      '-c',
      'import jax, json; print(json.dumps(dict('
      'jax=jax.__version__, backend=jax.default_backend(), devices=['
      'd.device_kind for d in jax.devices()])))',
    ],
    TIMEOUT_S['speed'],
    budget,
  )
  report['speed'] = [
    run(
      speed(f'configs/gmm_{b}_cifar10.py', dtype, steps, extra + batch), TIMEOUT_S['speed'], budget
    )
    for dtype in dtypes
    for b in backbones
  ]
  torch_args = [
    sys.executable,
    '-m',
    'gmm_vit_jax.benchmarks.torch_compare',
    '--config=configs/gmm_vit_cifar10.py',
    f'--steps={steps}',
    '--repeats=1' if cheap else '--repeats=3',
    *extra,
    *batch,
  ]
  report['torch'] = [
    run(
      torch_args + [f'--dtype={dtype}'] + ([] if cheap else ['--torch_compile']),
      TIMEOUT_S['torch'],
      budget,
    )
    for dtype in dtypes
  ]
  epochs = 2 if cheap else 2 * CIFAR_STEPS_PER_EPOCH
  report['two_epochs'] = run(
    speed('configs/gmm_vit_cifar10.py', dtypes[0], epochs, extra + batch),
    TIMEOUT_S['two_epochs'],
    budget,
  )
  report['levers'] = run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.benchmarks.levers',
      '--config=configs/gmm_vit_cifar10.py',
      f'--steps={steps}',
      *extra,
      *batch,
      *(['--variants=all on,no donation'] if cheap else []),
    ],
    TIMEOUT_S['levers'],
    budget,
  )
  report['finished'] = time.strftime('%Y-%m-%d %H:%M:%S %Z')
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  report = check(
    cheap=FLAGS.cheap, install='none' if FLAGS.cheap else FLAGS.install, budget_s=FLAGS.budget_s
  )
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(report, f, indent=1)
  failed = [
    f'{e["returncode"]}: {e["command"]}' for e in json_entries(report) if e['returncode'] != 0
  ]
  print(
    f'wrote {FLAGS.out}; {len(failed)} step(s) failed or skipped'
    + ''.join(f'\n  {c}' for c in failed)
  )


def json_entries(report: dict) -> list[dict]:
  """Every command entry of a report, in order."""
  entries = []
  for value in report.values():
    for item in value if isinstance(value, list) else [value]:
      if isinstance(item, dict) and 'command' in item:
        entries.append(item)
  return entries


if __name__ == '__main__':
  flags.DEFINE_string('out', 'accelerator_check.json', 'The JSON file to write.')
  flags.DEFINE_bool('cheap', False, 'The plumbing on a CPU: one tiny backbone, two steps.')
  flags.DEFINE_enum('install', 'cuda13', INSTALLS, 'Which JAX wheel to install first.')
  flags.DEFINE_float('budget_s', 570.0, 'No command starts after this many seconds.')
  cli.run_app(main)
