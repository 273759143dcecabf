"""The lock of a workdir on a bucket: an object that only one process can create.

WORKDIR/lock is created only if absent (on gs://, a generation precondition: it fails for
every process but one), and holds its owner: pid, host, the time it was taken, a token,
and a heartbeat time that a thread of the owner refreshes every HEARTBEAT_S seconds.
A bucket cannot tell that its owner died, so a lock is taken over, with a warning, when
its heartbeat is older than STALE_S seconds, or at once when its owner was a process of
this host that no longer exists. The owner deletes it on every way out; a process killed
with -9 leaves it for those two rules.
"""

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid

from gmm_vit_jax import errors, storage

HEARTBEAT_S = 30.0
STALE_S = 300.0


def _dead_here(holder: dict) -> bool:
  """Whether the holder was a process of this host that has ended."""
  if holder.get('host') != socket.gethostname() or not isinstance(holder.get('pid'), int):
    return False
  try:
    os.kill(holder['pid'], 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  return False


class ObjectLock:
  """WORKDIR/lock of a workdir URL; acquire() raises WorkdirInUseError while another holds it."""

  def __init__(self, workdir: str, name: str):
    self.workdir = workdir
    self.fs, self.path = storage.filesystem(storage.join(workdir, name))
    self._record = None
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict:
    try:
      return json.loads(self.fs.cat_file(self.path).decode() or '{}')
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
      return {}

  def _create(self) -> None:
    """Writes our record if no lock object exists; FileExistsError otherwise."""
    with self.fs.open(self.path, 'xb') as f:
      f.write(json.dumps(self._record).encode())

  def acquire(self) -> None:
    self._record = dict(
      pid=os.getpid(),
      host=socket.gethostname(),
      since=datetime.datetime.now().isoformat(timespec='seconds'),
      heartbeat=time.time(),
      token=uuid.uuid4().hex,
    )
    try:
      self._create()
    except FileExistsError:
      holder = self._read()
      age = time.time() - float(holder.get('heartbeat', 0))
      if age < STALE_S and not _dead_here(holder):
        raise self._in_use(holder, age) from None
      logging.warning(
        'Took over the lock of process %s on %s, which ended without releasing '
        'it (its last heartbeat was %.0f s ago).',
        holder.get('pid'),
        holder.get('host'),
        age,
      )
      self.fs.rm(self.path)
      try:
        self._create()
      except FileExistsError:  # Another process took it over first.
        raise self._in_use(self._read(), 0.0) from None
    self._thread = threading.Thread(target=self._beat, name='workdir lock heartbeat', daemon=True)
    self._thread.start()

  def _in_use(self, holder: dict, age: float) -> errors.WorkdirInUseError:
    return errors.WorkdirInUseError(
      f'{self.workdir} is in use by process {holder.get("pid", "?")} on '
      f'{holder.get("host", "?")} (since {holder.get("since", "?")}, heartbeat {age:.0f} s '
      f'ago): wait for it to end or stop it, or choose another --workdir. A lock whose '
      f'heartbeat is over {STALE_S:.0f} s old is taken over.'
    )

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if self._read().get('token') != self._record['token']:
          logging.error(
            'The lock of %s was taken over by another process while this one '
            'held it (no heartbeat for %.0f s): two runs may now write there.',
            self.workdir,
            STALE_S,
          )
          return
        self._record['heartbeat'] = time.time()
        self.fs.pipe_file(self.path, json.dumps(self._record).encode())
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
          'Could not refresh the lock of %s (%s); trying again in %.0f s.',
          self.workdir,
          e,
          HEARTBEAT_S,
        )

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if self._record is not None and self._read().get('token') == self._record['token']:
        self.fs.rm(self.path)
    except Exception as e:  # pylint: disable=broad-except
      # Released on the way out of an error, often a storage one: that error is the news.
      logging.warning(
        'Could not delete the lock of %s (%s): the next run takes it over once '
        'its heartbeat is %.0f s old.',
        self.workdir,
        e,
        STALE_S,
      )
    self._record = None
