"""The backend the code being traced will run on, decided at trace time.

Choices that depend on the platform (the attention core 'auto', the compute dtype
'auto', the XLA:CPU-only forms of Linear, DepthwiseConv and GELU) ask `backend()`.
It is jax.default_backend(), except inside `lowering_for(platform)`, where it is the
platform being lowered for: `python -m gmm_vit_jax.lower` traces a CUDA or TPU step
on a CPU machine and needs the choices that machine would make.

The choice is made when a function is traced: build and trace models for another
platform only inside the context, with fresh jax.jit objects (a jit cache filled
outside the context would be reused inside it).
"""

import contextlib
import contextvars

import jax

# jax.export's platform names -> the backend names jax.default_backend() returns.
EXPORT_PLATFORMS = {'cpu': 'cpu', 'cuda': 'gpu', 'rocm': 'gpu', 'tpu': 'tpu'}

_TARGET = contextvars.ContextVar('gmm_vit_jax_target_backend', default=None)


def backend() -> str:
  """'cpu', 'gpu' or 'tpu': the lowering target inside lowering_for, else this process's."""
  return _TARGET.get() or jax.default_backend()


def on_cpu() -> bool:
  """Whether the code being traced runs on XLA:CPU."""
  return backend() == 'cpu'


@contextlib.contextmanager
def lowering_for(platform: str):
  """Makes backend() answer for `platform`, a jax.export platform name ('cuda', 'tpu', ...)."""
  if platform not in EXPORT_PLATFORMS:
    raise ValueError(
      f'platform={platform!r} is not supported; choose one of {tuple(EXPORT_PLATFORMS)}.'
    )
  token = _TARGET.set(EXPORT_PLATFORMS[platform])
  try:
    yield
  finally:
    _TARGET.reset(token)
