"""Settings for runs on XLA:CPU, which the trainer and the benchmarks apply.

benchmarks/levers.py measures each on and off.

- XLA flags (`set_xla_flags`, before JAX starts its backend). YNNPACK fusions of
  reductions and elementwise ops are on by default in XLA:CPU; on this project's train
  step they run slower than XLA's own loops (the attention mask's gradient, a sum over
  the batch, took 33 ms of a 127 ms attention layer). Keeping YNNPACK for dot products
  only is worth 10 to 30% of a GMM-ViT step on a 2-core CPU. The flag names a CPU pass,
  so GPU and TPU runs are unaffected, and a value the user already put in XLA_FLAGS is
  left alone.
- Step memory kept mapped (`keep_step_memory`). XLA:CPU allocates a step's temporaries
  as one block (950 MiB for GMM-ViT at batch 128). Dispatched to a worker thread, as
  JAX does by default, the block comes from that thread's glibc arena, which serves
  anything this large with a fresh mmap and unmaps it when the step ends: every step
  faults in a gigabyte of new pages, 250,000 page faults and 0.7 s of kernel time in a
  2 s step. Run on the calling thread, with glibc told not to mmap and not to trim, the
  block comes from the main heap and stays mapped from one step to the next. Dispatch
  is under 0.1% of a step, so running steps inline loses no overlap worth having; the
  process keeps its peak heap until it exits. JAX reads the dispatch setting when it
  creates its CPU client, so this too comes before the backend starts, and it is left
  out wherever an accelerator may be used.
"""

import ctypes
import importlib.util
import os
import platform
from collections.abc import Mapping

import jax

XLA_CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': 'dot'}

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt(3): -1 turns trimming off. The largest positive value, INT_MAX, would still
# give back a free top of heap over 2 GiB, and CaiT's per-step block is 3.4 GiB.
NEVER_TRIM = -1


def set_xla_flags(flags: dict[str, str] = XLA_CPU_FLAGS) -> str:
  """Adds each flag to XLA_FLAGS unless it is there already; returns the new XLA_FLAGS.

  Call it before anything touches jax.devices(): XLA reads the flags once, at start-up.
  """
  current = os.environ.get('XLA_FLAGS', '')
  added = [f'{name}={value}' for name, value in flags.items() if name not in current]
  os.environ['XLA_FLAGS'] = ' '.join([current] + added).strip()
  return os.environ['XLA_FLAGS']


def cpu_only(environ: Mapping[str, str]) -> bool:
  """True when JAX will run on the CPU alone, decided without starting JAX.

  JAX_PLATFORMS decides when it is set; otherwise any installed accelerator plugin
  (CUDA and ROCm plugins live under `jax_plugins`; TPUs need `libtpu`) counts as an
  accelerator, even on a machine where it would find no device.
  """
  if environ.get('JAX_PLATFORMS'):
    return set(environ['JAX_PLATFORMS'].split(',')) == {'cpu'}
  return not any(importlib.util.find_spec(name) for name in ('jax_plugins', 'libtpu'))


def apply(config) -> None:
  """The XLA flags, and kept step memory where config.cpu_keep_step_memory asks for it.

  Call it before anything touches jax.devices().
  """
  set_xla_flags()
  if config.cpu_keep_step_memory:
    keep_step_memory()


def keep_step_memory() -> bool:
  """On CPU-only runs with glibc: steps run inline and freed memory stays in the heap.

  Returns whether it changed anything. Call it before anything touches jax.devices().
  """
  if not cpu_only(os.environ) or platform.libc_ver()[0] != 'glibc':
    return False
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  libc = ctypes.CDLL(None)
  if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
    raise RuntimeError('glibc refused mallopt(M_MMAP_MAX, 0) or mallopt(M_TRIM_THRESHOLD).')
  return True
