"""The run directory besides its checkpoints: the lock, the stored config, the summary.

    WORKDIR/lock                 held by the process training in WORKDIR: flock on a local
                                 disk, an object created only if absent on a bucket
                                 (training/object_lock.py)
    WORKDIR/config.json          the resolved config the trained state belongs to
    WORKDIR/config_history.json  each accepted change of a resumed run: step, fields, values
    WORKDIR/summary.json         eval results, best step, rates; rebuilt, never blanked

WORKDIR is a local folder or a storage URL (gmm_vit_jax/storage.py). Files are replaced
atomically (written beside, then renamed; an object is replaced whole), so a crash leaves
the old version or the new one, never half of one. Only process 0 writes; with several
processes, only process 0 holds the lock.

A workdir is taken only if it is this trainer's: absent or empty, or holding a config.json
the trainer wrote (one with the fields of OWN_CONFIG_FIELDS, which every config has), or,
before the first config.json is written, nothing but the trainer's own first files
(EARLY_FILES). Anything else is refused with one line before anything in it is changed;
names starting with '.' (.DS_Store, .ipynb_checkpoints) and lost+found are not counted.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket

import jax
import ml_collections

from gmm_vit_jax import errors, storage
from gmm_vit_jax.training.object_lock import ObjectLock

LOCK_FILE = 'lock'
CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.json'
SUMMARY_FILE = 'summary.json'

# Fields that change how a run is watched, stored, fed or computed, not what it learns
# (both input pipelines give the same batches; init_from acts only at step 0): a resumed
# run takes their new values and says so.
FREE_TO_CHANGE = (
  'log_every_steps',
  'progress_every_s',
  'progress_max_lines',
  'eval_every_epochs',
  'eval_batch_size',
  'checkpoint.',
  'profile_steps',
  'profile_start_step',
  'cpu_keep_step_memory',
  'dataset.data_dir',
  'dataset.download',
  'dataset.pipeline',
  'dataset.resident_share',
  'dataset.grain_workers',
  'dataset.grain_threads',
  'dataset.prefetch',
  'init_from',
  'init_from_dont_load',
  'init_from_partial',
  'model.attention.implementation',
  'model.attention.max_slices',
)
_ABSENT = '<absent>'
OWN_CONFIG_FIELDS = (
  'model.name',
  'dataset.name',
  'epochs',
  'batch_size',
  'seed',
  'checkpoint.every_steps',
)
# What a run writes before its config.json (the lock, init_from's report) and what a
# crash mid-write leaves.
EARLY_FILES = (LOCK_FILE, 'init_from.txt', f'{CONFIG_FILE}.tmp')


def flatten(config: dict, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_as_data(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json stores it (tuples become lists), for comparisons."""
  return json.loads(config.to_json_best_effort())


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
  """{field: (old value, new value)} for every field that differs, absent ones included."""
  old, new = flatten(old), flatten(new)
  return {
    k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
    for k in sorted(old.keys() | new.keys())
    if old.get(k, _ABSENT) != new.get(k, _ABSENT)
  }


def _is_free(field: str) -> bool:
  return any(field == f or (f.endswith('.') and field.startswith(f)) for f in FREE_TO_CHANGE)


def _listing(changes: dict) -> str:
  return ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changes.items())


class RunDirectory:
  """WORKDIR's lock, stored config and summary."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._lock_fd = None
    self._object_lock = None

  def path(self, name: str) -> str:
    return storage.join(self.workdir, name)

  def check_is_ours(self) -> None:
    """A UserError naming what was found and the fix, unless the workdir is absent, empty
    or this trainer's (see the module docstring); reads only."""
    names = storage.names_in(
      '--workdir',
      self.workdir,
      'choose a directory that does not exist yet (it is created) or a run directory of this '
      'trainer.',
    )
    names = sorted(n for n in names if not n.startswith('.') and n != 'lost+found')
    fix = 'choose an empty or new --workdir; nothing in it was changed.'
    if CONFIG_FILE in names:
      try:
        stored = flatten(self.stored_config())
        missing = [f for f in OWN_CONFIG_FIELDS if f not in stored]
        lacks = f'it has no {", ".join(missing)}'
      except (ValueError, AttributeError, IsADirectoryError):
        missing, lacks = True, 'it is not a JSON object'
      if missing:
        raise errors.UserError(
          f'{self.path(CONFIG_FILE)} is not a config this trainer wrote ({lacks}): {fix}'
        )
      return
    foreign = [n for n in names if n not in EARLY_FILES]
    if foreign:
      more = f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''
      raise errors.UserError(
        f'{self.workdir} holds files this trainer did not write '
        f'({", ".join(foreign[:5])}{more}) and no config.json of its '
        f'own: {fix}'
      )

  @contextlib.contextmanager
  def locked(self):
    """Holds WORKDIR/lock for the block; a WorkdirInUseError at once if a live process has it.

    The workdir is checked first (check_is_ours).
    """
    self.check_is_ours()
    if jax.process_index() != 0:
      yield
      return
    storage.check_reachable(self.workdir)
    storage.makedirs(self.workdir)
    self._acquire()
    try:
      yield
    finally:
      self._release()

  def _acquire(self) -> None:
    if storage.is_url(self.workdir):
      self._object_lock = ObjectLock(self.workdir, LOCK_FILE)
      self._object_lock.acquire()
      return
    fd = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise errors.WorkdirInUseError(
        f'{self.workdir} is in use by process {holder.get("pid", "?")} on '
        f'{holder.get("host", "?")} (since {holder.get("since", "?")}): wait for it to end or '
        'stop it, or choose another --workdir.'
      ) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
        os.close(fd)
        raise
      logging.warning(
        '%s does not support file locks: nothing stops a second run from '
        'using this workdir at the same time.',
        self.workdir,
      )
    previous = _read_holder(fd)
    if previous:
      # flock is released when its holder dies, so a holder still named here died.
      logging.warning(
        'Took over the lock of process %s on %s, which ended without releasing it.',
        previous.get('pid'),
        previous.get('host'),
      )
    os.ftruncate(fd, 0)
    os.pwrite(
      fd,
      json.dumps(
        dict(
          pid=os.getpid(),
          host=socket.gethostname(),
          since=datetime.datetime.now().isoformat(timespec='seconds'),
        )
      ).encode(),
      0,
    )
    self._lock_fd = fd

  def _release(self) -> None:
    if self._object_lock is not None:
      self._object_lock.release()
      self._object_lock = None
      return
    # The file stays: removing it would let a process that opened it before the removal
    # lock an orphaned copy while a third locks a new file.
    os.ftruncate(self._lock_fd, 0)
    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
    os.close(self._lock_fd)
    self._lock_fd = None

  def stored_config(self) -> dict | None:
    """config.json as stored, or None for a new run."""
    try:
      return json.loads(storage.read_text(self.path(CONFIG_FILE)))
    except FileNotFoundError:
      return None

  def check_config(
    self,
    config: ml_collections.ConfigDict,
    *,
    has_checkpoint: bool,
    allowed: tuple[str, ...],
    changes_structure,
  ) -> dict:
    """The changes of `config` against the stored one, if the run may go on with them.

    has_checkpoint: whether a trained state exists; without one any change is accepted.
    allowed: fields the user explicitly lets change (--allow_config_change).
    changes_structure(old_config) -> bool: whether the old config's train state has another
      tree or other shapes, which no checkpoint restore can bridge.
    Raises ConfigChangedError naming each refused field, its old and new value and the fix.
    """
    stored = self.stored_config()
    if stored is None:
      return {}
    changes = config_changes(stored, config_as_data(config))
    if not changes or not has_checkpoint:
      return changes
    unknown = sorted(set(allowed) - set(changes))
    if unknown:
      raise errors.ConfigError(
        f'--allow_config_change names {", ".join(unknown)}, which did not change; the changed '
        f'fields are: {", ".join(changes) or "none"}.'
      )
    if changes_structure(ml_collections.ConfigDict(stored)):
      raise errors.ConfigChangedError(
        f'{self.workdir} holds a model of another shape: {_listing(changes)}. Its checkpoints '
        'cannot take the new config: choose a new --workdir (or restore the old values).'
      )
    refused = {k: v for k, v in changes.items() if not _is_free(k) and k not in allowed}
    if refused:
      raise errors.ConfigChangedError(
        f'{self.workdir} was trained with other values: {_listing(refused)}. These change what '
        'the run learns: choose a new --workdir, or rerun with '
        f'--allow_config_change={",".join(refused)} to go on with the new values.'
      )
    return changes

  def write_config(self, config: ml_collections.ConfigDict, changes: dict, step: int) -> None:
    """Stores the config in force, and the accepted changes in the history."""
    if jax.process_index() != 0:
      return
    storage.write_atomically(
      self.path(CONFIG_FILE), config.to_json_best_effort(indent=2, sort_keys=True)
    )
    if not changes or step == 0:
      return
    history = self._read_json(HISTORY_FILE) or []
    history.append(
      dict(
        step=step,
        time=datetime.datetime.now().isoformat(timespec='seconds'),
        changes={k: list(v) for k, v in changes.items()},
      )
    )
    storage.write_atomically(self.path(HISTORY_FILE), json.dumps(history, indent=2))

  def read_summary(self) -> dict | None:
    return self._read_json(SUMMARY_FILE)

  def finished_summary(
    self, config: ml_collections.ConfigDict, latest_step: int | None
  ) -> dict | None:
    """The stored summary, if the run is complete with `config` (up to fields free to change)
    and nothing has been saved after it; then there is nothing left to train."""
    summary = self.read_summary()
    stored = self.stored_config()
    if not (
      summary
      and summary.get('completed')
      and summary.get('step') == latest_step
      and stored is not None
    ):
      return None
    changes = config_changes(stored, config_as_data(config))
    return None if any(not _is_free(field) for field in changes) else summary

  def write_summary(self, summary: dict) -> None:
    if jax.process_index() == 0:
      storage.write_atomically(self.path(SUMMARY_FILE), json.dumps(summary, indent=2))

  def _read_json(self, name: str):
    try:
      return json.loads(storage.read_text(self.path(name)))
    except (FileNotFoundError, json.JSONDecodeError):
      return None


def _read_holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (ValueError, UnicodeDecodeError):
    return {}
