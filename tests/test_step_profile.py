"""The step profile and the XLA options benchmark: their output, not their speed."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from gmm_vit_jax.benchmarks import step_profile
from gmm_vit_jax.benchmarks.cpu_info import cpu_description
from tests.model_testing import QUICK_COMPILES_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_tile amx_bf16

processor\t: 1
model name\t: Example CPU 9000
"""


def test_cpu_description_names_the_model_and_its_matrix_extensions():
  described = cpu_description(CPUINFO)
  assert described.startswith('Example CPU 9000, ')
  assert described.endswith('avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile')


def test_hlo_classes_tell_products_copies_and_the_optimizer_apart():
  tx = optax.adamw(1e-3)

  def step(w, opt_state, x, q):
    def loss(w):
      h = q @ w[:16]
      return jnp.tanh(x @ w).sum() + jnp.tanh(jnp.einsum('bid,bjd->bij', h, h)).sum()

    grads = jax.grad(loss)(w)
    updates, opt_state = tx.update(grads, opt_state, w)
    return optax.apply_updates(w, updates), opt_state, jnp.swapaxes(x, 0, 1) + 0

  w, x, q = jnp.ones((32, 16)), jnp.ones((64, 32)), jnp.ones((4, 8, 16))
  compiled = jax.jit(step).lower(w, tx.init(w), x, q).compile()
  ops = step_profile.parse_hlo(compiled.as_text())
  classes = step_profile.hlo_classes(ops)
  found = set(classes.values())
  assert {step_profile.DENSE, step_profile.BATCHED, step_profile.OPTIMIZER} <= found
  # Every operation XLA runs gets a class; containers and fused computations' insides do not.
  entry = {name for name, op in ops.items() if name and op['computation'].startswith('main')}
  assert entry and all(
    name in classes or ops[name]['opcode'] in step_profile.CONTAINERS for name in entry
  )
  dots = {name for name, op in ops.items() if name and op['opcode'] == 'dot'}
  assert dots and all(
    name not in classes or classes[name] in (step_profile.DENSE, step_profile.BATCHED)
    for name in dots
  )


def test_profile_reports_both_sides_with_shares_that_add_up():
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.benchmarks.step_profile',
      '--config=tests/tiny_config.py',
      '--batch_size=8',
      '--steps=1',
      '--top=1',
      '--json',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
  ).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result['cpu'] == cpu_description() and result['batch_size'] == 8
  assert [side['side'].split()[0] for side in result['sides']] == ['jax', 'pytorch']
  for side in result['sides']:
    assert set(side['classes']) == set(step_profile.CLASSES)
    assert sum(c['share'] for c in side['classes'].values()) == pytest.approx(1.0, abs=1e-6)
    assert side['step_ms'] > 0 and 2 <= len(side['top']) <= len(step_profile.CLASSES)
    assert side['classes'][step_profile.DENSE]['ms'] > 0
    assert len({row['cls'] for row in side['top']}) == len(side['top'])


def test_xla_options_parse_to_the_types_xla_wants():
  from gmm_vit_jax.benchmarks.xla_options import parse_options

  assert parse_options('a=true,b=512,c=dot') == {'a': True, 'b': 512, 'c': 'dot'}


def test_xla_options_runs_each_variant_beside_the_default():
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'gmm_vit_jax.benchmarks.xla_options',
      '--config=tests/tiny_config.py',
      '--batch_size=8',
      '--rounds=2',
      '--options=xla_cpu_prefer_vector_width=512',
      '--json',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, **QUICK_COMPILES_ENV},
  ).stdout
  rows = [json.loads(line) for line in out.strip().splitlines() if line.startswith('{')]
  assert [row['variant'] for row in rows] == ['default', 'xla_cpu_prefer_vector_width=512']
  assert rows[0]['vs_default'] == 1.0 and all(row['images_per_s'] > 0 for row in rows)
