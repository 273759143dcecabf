"""What grain's worker processes do first: end with the training process, however it ends.

A worker whose parent is killed (kill -9, the out-of-memory killer) would otherwise go on
reading and decoding for nobody. Each worker polls its parent's pid and exits once it
changes (the orphan is adopted by init or a subreaper); the multiprocessing resource
tracker then sees its last client gone and exits too. A worker whose parent dies while
it is still starting (importing) notices as soon as its start reaches this initialiser.
A parent-death signal (prctl PR_SET_PDEATHSIG) is no substitute: it fires when the
*thread* that started the worker ends, and grain starts its workers from pool threads.

Workers also ignore SIGINT: a Ctrl-C in a terminal reaches the whole process group, and
the trainer, which stops at its next step and saves, ends its workers itself.
"""

import functools
import os
import signal
import threading
import time

POLL_S = 0.5  # How long a worker may outlive its parent.


def _exit_when_orphaned(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(POLL_S)
  os._exit(1)  # Nothing of the worker's is worth finishing: its reader is gone.


def _start(parent: int, index: int, count: int) -> None:
  del index, count  # Every worker does the same.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(
    target=_exit_when_orphaned, args=(parent,), name='exit with parent', daemon=True
  ).start()


def worker_init_fn():
  """grain's mp_prefetch worker_init_fn for workers of this process."""
  return functools.partial(_start, os.getpid())
