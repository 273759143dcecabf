"""ONNX export: model.onnx in ONNX Runtime gives the Flax logits, for every backbone."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest

from configs import common
from gmm_vit_jax import errors, export, onnx_export
from gmm_vit_jax.augment.basic import normalize
from gmm_vit_jax.models import build_from_config
from gmm_vit_jax.training import loop
from tests.model_testing import QUICK_COMPILES_ENV, TINY_CONFIGS
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), image_size=32, channels=3)


def onnx_logits(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # Errors only: the runtime warns about unused constants.
  session = onnxruntime.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])
  return session.run(['logits'], {'images': images})[0]


def test_pad_and_stack_rewrites_match_jax():
  """The converter sees concatenations where the jaxpr pads or stacks, inside nested jits."""
  x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)

  @jax.jit
  def inner(x):
    return jnp.pad(x, ((0, 0), (1, 2), (3, 0)), constant_values=-1.0)

  def fn(x):
    padded = inner(x)
    return jnp.stack([padded, 2 * padded], axis=1), jax.lax.pad(x, 0.0, ((0, 0, 1),) * 3)

  closed = jax.make_jaxpr(fn)(x)
  primitives = {e.primitive.name for e in closed.jaxpr.eqns}
  assert {'jit', 'stack', 'pad'} <= primitives
  ours = onnx_export._evaluate(closed.jaxpr, closed.consts, x)
  for got, want in zip(ours, fn(x)):
    np.testing.assert_array_equal(got, want)
  rewritten = jax.make_jaxpr(lambda x: onnx_export._evaluate(closed.jaxpr, closed.consts, x))(x)
  names = [e.primitive.name for e in rewritten.jaxpr.eqns]
  assert 'jit' not in names and 'stack' not in names
  assert names.count('pad') == 1  # The interior padding stays a pad.


def tiny_mixture_of_keys_vit():
  config = TINY_CONFIGS['vit']('gmm')
  config.model.attention = common.attention('mixture_of_keys')
  return config


CONFIGS = {
  **{name: lambda make=make: make('gmm') for name, make in TINY_CONFIGS.items()},
  'vit_mixture_of_keys': tiny_mixture_of_keys_vit,
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_onnx_logits_match_flax(name):
  """Each backbone with the Gaussian mixture mask, and the ViT with mixture-of-keys
  attention too, at two batch sizes (the batch is dynamic)."""
  model = build_from_config(CONFIGS[name]())
  model_bytes = onnx_export.to_onnx(model, CIFAR).SerializeToString()
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    expected = model(
      normalize(jnp.asarray(images), CIFAR['mean'], CIFAR['std']), deterministic=True
    )
    np.testing.assert_allclose(onnx_logits(model_bytes, images), expected, rtol=0, atol=1e-4)


def test_export_cli_writes_model_onnx_beside_the_bundle(tmp_path, monkeypatch):
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'bundle')
  loop.train_and_evaluate(tiny_config(epochs=1), workdir)
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.export',
      f'--workdir={workdir}',
      f'--out={out}',
      '--format=onnx',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr and 'serde' not in done.stderr  # The converter is quiet.
  path = os.path.join(out, onnx_export.ONNX_FILE)
  assert f'ONNX model written to {path}' in done.stdout
  graph = onnx.load(path).graph
  images_type = graph.input[0].type.tensor_type
  assert graph.input[0].name == 'images' and images_type.elem_type == onnx.TensorProto.UINT8
  assert images_type.shape.dim[0].dim_param  # A named, dynamic batch.
  bundle = export.load(out)
  images = np.random.default_rng(0).integers(0, 256, (5, *bundle.image_shape), dtype=np.uint8)
  with open(path, 'rb') as f:
    np.testing.assert_allclose(
      onnx_logits(f.read(), images), bundle.predict(images), rtol=0, atol=1e-4
    )

  def unsupported(model, preprocess):
    raise NotImplementedError("[converter] No plugins registered for primitive 'frobnicate'")

  monkeypatch.setattr(onnx_export, 'to_onnx', unsupported)
  with pytest.raises(errors.UserError, match="backbone 'vit' failed: .*'frobnicate'"):
    onnx_export.write_onnx(out)
