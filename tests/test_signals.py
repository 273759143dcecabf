"""How a real run ends when it is told to: Ctrl-C saves and stops, a second Ctrl-C waits for
the save, and kill -9 leaves no grain worker or resource tracker behind."""

import json
import logging
import os
import re
import signal
import threading
import time

import pytest

from gmm_vit_jax import errors
from gmm_vit_jax.training import loop
from gmm_vit_jax.training.checkpoint import Checkpointer
from tests.test_training import run_train, tiny_config

pytestmark = pytest.mark.usefixtures('quick_compiles')

STEPS_PER_EPOCH = 22


class _Console:
  """The lines a run prints, read as they come."""

  def __init__(self, proc):
    self.proc, self.lines = proc, []
    self._reader = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
    self._reader.start()

  def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
      for line in list(self.lines):
        if found := re.search(pattern, line):
          return found
      if self.proc.poll() is not None and not self._reader.is_alive():
        break
      time.sleep(0.05)
    raise AssertionError(f'no {pattern!r} in {timeout} s:\n{self.text()[-3000:]}')

  def text(self, timeout: float = 300) -> str:
    self.proc.wait(timeout)
    self._reader.join(timeout)
    return ''.join(self.lines)


def _saved_steps(workdir: str) -> list[int]:
  checkpointer = Checkpointer(workdir, tiny_config().checkpoint)
  steps = sorted(checkpointer.manager.all_steps())
  checkpointer.close()
  return steps


def test_ctrl_c_saves_at_the_stop_step_and_the_rerun_resumes_there(tmp_path, caplog):
  """Ctrl-C (SIGINT), pressed twice: a checkpoint of the stop step, one line saying so,
  exit 75, no traceback; the second press waits for the save to be committed."""
  workdir = str(tmp_path / 'run')
  # No save but the one at the stop: without it a rerun would start over.
  args = (
    '--config.epochs=400',
    '--config.checkpoint.every_steps=100000',
    '--config.eval_every_epochs=1000',
    '--config.progress_every_s=0.2',
  )
  proc = run_train(workdir, *args)
  console = _Console(proc)
  console.wait_for(r'step [1-9]\d*/')
  proc.send_signal(signal.SIGINT)
  # The second press once the first is handled (two at once arrive as one): the rest of the
  # step, the save and its commit are still ahead.
  console.wait_for('received: saving a checkpoint')
  proc.send_signal(signal.SIGINT)
  out = console.text()
  assert proc.returncode == errors.EXIT_STOPPED, out[-3000:]
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out[-3000:]
  stopped = re.findall(r'Stopped at step (\d+) of (\d+); rerun the same command to resume', out)
  assert len(stopped) == 1, out[-3000:]
  step, total = map(int, stopped[0])
  assert total == 400 * STEPS_PER_EPOCH and 0 < step < total
  assert out.count('Ctrl-C (SIGINT) received: saving a checkpoint and stopping.') == 1
  assert out.count('received again: still saving the checkpoint') == 1
  assert _saved_steps(workdir) == [step]
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['step'] == step and not summary['completed']

  # The rest of the epoch the stop fell in, then done.
  config = tiny_config(epochs=step // STEPS_PER_EPOCH + 1)
  config.checkpoint.every_steps, config.eval_every_epochs = 100000, 1000
  config.progress_every_s = 0.2
  caplog.set_level(logging.INFO)
  summary = loop.train_and_evaluate(config, workdir, allow_config_change=('epochs',))
  assert summary['completed']
  assert f'Resumed from the checkpoint at step {step} of' in caplog.text


def test_ctrl_c_while_the_run_starts_is_one_line(tmp_path):
  """Before the first step there is nothing to save: one line, exit 75, no traceback."""
  proc = run_train(str(tmp_path / 'run'))
  console = _Console(proc)
  console.wait_for('Mesh: ')  # Loading the data and building the model are ahead.
  proc.send_signal(signal.SIGINT)
  out = console.text()
  assert proc.returncode == errors.EXIT_STOPPED, out[-3000:]
  assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out[-3000:]
  assert out.strip().splitlines()[-1] == 'Stopped by Ctrl-C; rerun the same command to go on.'


def _processes() -> dict[int, tuple[int, str, str]]:
  """{pid: (parent pid, state, start time)} of every process, from /proc."""
  found = {}
  for entry in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:  # Ended meanwhile.
      continue
    fields = stat[stat.rindex(')') + 2 :].split()  # After the name, which may hold spaces.
    found[int(entry)] = (int(fields[1]), fields[0], fields[19])
  return found


def _descendants(pid: int) -> dict[int, str]:
  """{pid: start time} of the living processes below `pid`."""
  processes, found, todo = _processes(), {}, [pid]
  while todo:
    parent = todo.pop()
    for child, (ppid, state, start) in processes.items():
      if ppid == parent and state != 'Z' and child not in found:
        found[child] = start
        todo.append(child)
  return found


def _command(pid: int) -> str:
  with open(f'/proc/{pid}/cmdline') as f:
    return f.read().replace('\0', ' ')


def _alive(pid: int, start: str) -> bool:
  """Whether the process `pid` started at `start` still runs (a zombie has ended)."""
  process = _processes().get(pid)
  return process is not None and process[1] != 'Z' and process[2] == start


def test_kill_9_leaves_no_grain_worker_or_resource_tracker(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_train(
    workdir,
    '--config.epochs=400',
    '--config.dataset.pipeline=grain',
    '--config.dataset.grain_workers=2',
    '--config.progress_every_s=0.2',
  )
  console = _Console(proc)
  console.wait_for(r'step [1-9]\d*/')  # Training: the workers are past their start.
  children = _descendants(proc.pid)
  commands = [_command(pid) for pid in children]
  assert sum('multiprocessing.resource_tracker' in c for c in commands) == 1, commands
  assert sum('multiprocessing.spawn' in c for c in commands) == 2, commands
  proc.kill()
  proc.wait(30)
  deadline = time.time() + 15  # Each polls its parent twice a second; the CPUs may be busy.
  while any(_alive(*child) for child in children.items()) and time.time() < deadline:
    time.sleep(0.1)
  left = [pid for pid, start in children.items() if _alive(pid, start)]
  assert not left, [_command(pid) for pid in left]
