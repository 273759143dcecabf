"""Multi-process training: two train.py processes on localhost act as one run.

Marked `multiprocess` (deselect with -m 'not multiprocess'): the tests start two or
three train.py processes each, joined by jax.distributed over CPU devices (gloo
collectives), and wait for them to compile and train the tiny config.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gmm_vit_jax import errors
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import restore_model
from tests.model_testing import QUICK_COMPILES_ENV
from tests.test_training import tiny_config

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures('quick_compiles')]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Launchers' variables would make JAX detect a cluster these tests do not run in.
CLUSTER_PREFIXES = (
  'SLURM_',
  'OMPI_',
  'PMI_',
  'JAX_COORDINATOR',
  'JAX_LOCAL_DEVICE_IDS',
  'KUBERNETES_',
)
TIMEOUT_S = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(workdir, log_path, *flags, devices, env=None):
  """Starts train.py on the tiny config with `devices` local CPU devices; output to log_path."""
  base = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}
  base.update(
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    **QUICK_COMPILES_ENV,
  )
  log = open(log_path, 'w')
  proc = subprocess.Popen(
    [sys.executable, 'train.py', '--config=tests/tiny_config.py', f'--workdir={workdir}', *flags],
    cwd=ROOT,
    env={**base, **(env or {})},
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  log.close()
  return proc


def wait_all(procs) -> list[int]:
  """The exit codes; a process still running after TIMEOUT_S is killed (and fails)."""
  try:
    return [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def finish(procs, logs, expected: int = errors.EXIT_OK) -> list[str]:
  """Waits for every process; returns their output, failing with it on another exit code."""
  codes = wait_all(procs)
  outputs = [open(path).read() for path in logs]
  for code, out in zip(codes, outputs):
    assert code == expected, out[-4000:]
  return outputs


def closing_figures(output: str) -> str:
  """What a process's closing line says of the run, up to its timing: the step, the eval
  figures and the best checkpoint."""
  return re.search(r'(Done at step .*?); \S+ in all', output).group(1)


def stopped_step(output: str) -> int:
  return int(re.search(r'Stopped at step (\d+) of', output).group(1))


def test_two_processes_train_like_one_device_with_the_same_global_batch(tmp_path):
  """Two processes of two devices each against one device in this process: data
  parallelism over processes and over devices together leaves the result unchanged."""
  port = free_port()
  multi, single = tmp_path / 'two_processes', tmp_path / 'one_device'
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = [
    launch(
      multi,
      logs[i],
      '--config.epochs=1',
      f'--coordinator_address=localhost:{port}',
      '--num_processes=2',
      f'--process_id={i}',
      devices=2,
    )
    for i in range(2)
  ]
  alone = loop.train_and_evaluate(tiny_config(epochs=1), str(single))
  outputs = finish(procs, logs)

  for i in range(2):
    assert f'Process {i} of 2; 2 local and 4 global devices.' in outputs[i]
  assert closing_figures(outputs[0]) == closing_figures(outputs[1])
  first = json.loads((multi / 'summary.json').read_text())
  assert 'train_loss' in first
  assert first['step'] == 22 and first['completed'] and first['devices'] == 4
  assert alone['devices'] == 1

  # Written once, by process 0 or through orbax's coordination: one config, one summary,
  # one event file, one directory per checkpointed step.
  assert json.load(open(multi / 'summary.json'))['step'] == 22
  assert len([f for f in os.listdir(multi) if f.startswith('events.out')]) == 1
  steps = sorted(int(d) for d in os.listdir(multi / 'checkpoints'))
  assert steps == sorted(int(d) for d in os.listdir(single / 'checkpoints')) == [10, 20, 22]

  np.testing.assert_allclose(first['eval_loss'], alone['eval_loss'], rtol=1e-4)
  assert first['eval_accuracy'] == alone['eval_accuracy']
  trained = [jax.tree.leaves(restore_model(str(d), 'latest')[0]) for d in (multi, single)]
  assert len(trained[0]) == len(trained[1])
  for a, b in zip(*trained):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_ctrl_c_to_one_process_stops_both_at_one_step(tmp_path):
  """Cluster detection (here SLURM's variables) with --distributed; Ctrl-C (SIGINT) is
  passed on as SIGTERM, and JAX's preemption service makes both processes stop and save
  at the same step."""
  port = free_port()
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = [
    launch(
      tmp_path / 'run',
      logs[i],
      '--distributed',
      '--config.epochs=200',
      '--config.checkpoint.every_steps=100000',
      devices=1,
      env=dict(
        SLURM_JOB_ID='1',
        SLURM_STEP_NODELIST='localhost',
        SLURM_NTASKS='2',
        SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i),
        JAX_COORDINATOR_PORT=str(port),
      ),
    )
    for i in range(2)
  ]
  deadline = time.time() + TIMEOUT_S
  while not re.search(r'step \d+/4400', open(logs[1]).read()):  # A progress line: training.
    assert time.time() < deadline and procs[1].poll() is None, open(logs[1]).read()[-4000:]
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGINT)
  outputs = finish(procs, logs, expected=errors.EXIT_STOPPED)

  for i in range(2):
    assert f'Process {i} of 2; 1 local and 2 global devices.' in outputs[i]
  assert stopped_step(outputs[0]) == stopped_step(outputs[1])
  summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
  assert not summary['completed'] and summary['step'] == stopped_step(outputs[0]) < 200 * 22
  saved = [int(d) for d in os.listdir(tmp_path / 'run' / 'checkpoints')]
  assert summary['step'] == max(saved)


def test_distributed_without_a_cluster_names_the_flags(tmp_path):
  log = tmp_path / 'process.log'
  proc = launch(tmp_path / 'run', log, '--distributed', devices=1)
  assert wait_all([proc]) != [0]
  assert (
    'Outside Cloud TPU pods, SLURM, Open MPI and Kubernetes pass --coordinator_address, '
    '--num_processes and --process_id.'
  ) in open(log).read()
