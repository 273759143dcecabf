"""The CPU a benchmark ran on, as its figures should name it."""

import os

# Vector and matrix extensions that decide which kernels XLA and PyTorch can use.
VECTOR_FLAGS = (
  'avx2',
  'fma',
  'avx512f',
  'avx512bw',
  'avx512vl',
  'avx512_vnni',
  'avx512_bf16',
  'avx512_fp16',
  'amx_bf16',
  'amx_int8',
  'amx_tile',
  'sve',
  'sve2',
  'asimd',
)


def cpu_description(cpuinfo: str | None = None) -> str:
  """'<model name>, <N> cores, <extensions>' from /proc/cpuinfo (or the text given).

  Where there is no /proc/cpuinfo (not Linux), the platform's processor string.
  """
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo', encoding='utf-8') as f:
        cpuinfo = f.read()
    except OSError:
      import platform

      return f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores'
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  model = fields.get('model name') or fields.get('CPU implementer', 'unknown CPU')
  present = set((fields.get('flags') or fields.get('Features') or '').split())
  extensions = [name for name in VECTOR_FLAGS if name in present]
  return f'{model}, {os.cpu_count()} cores, {" ".join(extensions) or "no AVX2/AVX-512/AMX"}'
