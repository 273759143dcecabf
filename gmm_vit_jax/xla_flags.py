"""XLA:CPU flags the trainer and the benchmarks set before JAX starts its backend.

YNNPACK fusions of reductions and elementwise ops are on by default in XLA:CPU; on
this project's train step they run slower than XLA's own loops (the attention mask's
gradient, a sum over the batch, took 33 ms of a 127 ms attention layer). Keeping
YNNPACK for dot products only is worth 10 to 30% of a GMM-ViT step on a 2-core CPU
(benchmarks/levers.py measures it). The flag names a CPU pass, so GPU and TPU runs
are unaffected, and a value the user already put in XLA_FLAGS is left alone.
"""

import os

CPU_FLAGS = {'--xla_cpu_experimental_ynn_fusion_type': 'dot'}


def set_cpu_flags(flags: dict[str, str] = CPU_FLAGS) -> str:
  """Adds each flag to XLA_FLAGS unless it is there already; returns the new XLA_FLAGS.

  Call it before anything touches jax.devices(): XLA reads the flags once, at start-up.
  """
  current = os.environ.get('XLA_FLAGS', '')
  added = [f'{name}={value}' for name, value in flags.items() if name not in current]
  os.environ['XLA_FLAGS'] = ' '.join([current] + added).strip()
  return os.environ['XLA_FLAGS']
