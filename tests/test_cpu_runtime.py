"""The settings for XLA:CPU runs: flags added once, step memory kept in the heap."""

import os
import subprocess
import sys

from gmm_vit_jax import cpu_runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Steps of a jitted function whose temporaries are one 256 MiB block (65,536 pages of
# 4 KiB); prints the page faults of ten steps after two.
STEP_FAULTS = """
import resource, sys
import jax, jax.numpy as jnp
from gmm_vit_jax import cpu_runtime
if sys.argv[1] == 'keep':
  assert cpu_runtime.keep_step_memory()
step = jax.jit(lambda x: jnp.sum(jnp.tanh(jnp.outer(x, x)) @ x))
x = jnp.ones(8192)
for _ in range(2):
  step(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  step(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_xla_flags_are_added_once_and_never_override(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  flags = cpu_runtime.set_xla_flags()
  assert flags == (
    '--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=dot'
  )
  assert cpu_runtime.set_xla_flags() == flags
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=dot,reduce')
  assert cpu_runtime.set_xla_flags() == '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'


def step_faults(mode: str) -> int:
  done = subprocess.run(
    [sys.executable, '-c', STEP_FAULTS, mode],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    check=True,
  )
  return int(done.stdout.split()[-1])


def test_kept_step_memory_is_not_faulted_in_again():
  # By default each step faults its block in afresh. Kept, the blocks are reused; a step's
  # block is sometimes freed just after the next step allocates, so the heap may still
  # grow by a block or two to hold two steps at once (seen: two, 131,090 faults), but not
  # by one per step.
  assert step_faults('default') > 10 * 60_000
  assert step_faults('keep') < 3 * 70_000


def test_jax_platforms_decides_cpu_only_when_set():
  assert cpu_runtime.cpu_only({'JAX_PLATFORMS': 'cpu'})
  assert not cpu_runtime.cpu_only({'JAX_PLATFORMS': 'cuda,cpu'})
  assert not cpu_runtime.cpu_only({'JAX_PLATFORMS': 'tpu'})
