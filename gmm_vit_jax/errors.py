"""Errors a user can act on, and the exit codes of the command-line tools.

A `UserError`'s message names the cause and the fix; `cli.run` prints it as one line,
with no traceback, and exits with EXIT_ERROR. Disk-full and permission failures are
found anywhere in an exception's chain (orbax and TensorBoard wrap them several times)
and reduced to one line too.
"""

import errno
import os
import re

EXIT_OK = 0
EXIT_ERROR = 1
# sysexits.h's EX_TEMPFAIL: the run stopped on a SIGTERM after saving; rerun to resume.
EXIT_STOPPED = 75


class UserError(Exception):
  """An error whose message says what went wrong and what to do."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that the trainer does not accept."""


class ConfigChangedError(UserError):
  """The workdir holds a run trained with a config that differs from the one given."""


class WorkdirInUseError(UserError):
  """Another live process holds the workdir's lock."""


class NonFiniteError(UserError, FloatingPointError):
  """The loss or the train state became NaN or infinite; nothing was saved."""


class CheckpointError(UserError):
  """No checkpoint of the workdir can be restored."""


class DatasetUnavailableError(UserError, RuntimeError):
  """The dataset is not prepared and cannot be downloaded from here."""


class DatasetError(UserError, ValueError):
  """The dataset's files are there, but one of them is not what the dataset holds."""


class StorageError(UserError, OSError):
  """A disk-full, quota, permission or read-only failure, described in one line."""


_FIXES = {
  errno.ENOSPC: 'free some space there or choose another --workdir',
  errno.EDQUOT: 'free some space there or choose another --workdir',
  errno.EACCES: 'choose a directory you can write to',
  errno.EPERM: 'choose a directory you can write to',
  errno.EROFS: 'choose a directory on a writable file system',
}
# Tensorstore (orbax's array writer) reports OS errors in its message text only:
# ... Failed writing: "/path/file": ... No space left on device [...] [os_error_code='28']
_TENSORSTORE_CODE = re.compile(r"os_error_code='?(\d+)")
_TENSORSTORE_PATH = re.compile(r'Failed [a-z ]*: "(/[^"]+)"|"(/[^"\\]+)"')


def _chain(exc: BaseException):
  """exc, its causes and contexts, and the members of exception groups, each once."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]


def describe_storage_error(exc: BaseException, where: str | None = None) -> str | None:
  """One line for a disk-full, quota, permission or read-only failure in exc's chain.

  where: the path to name when the failure itself names none.
  Returns None when the chain holds no such failure.
  """
  for e in _chain(exc):
    if isinstance(e, StorageError):
      return str(e)
    if isinstance(e, OSError) and e.errno in _FIXES:
      path = e.filename or where or 'a file'
      return f'{e.strerror or errno.errorcode[e.errno]}: {path} ({_FIXES[e.errno]}).'
    code = _TENSORSTORE_CODE.search(str(e))
    if code and int(code.group(1)) in _FIXES:
      path = _TENSORSTORE_PATH.search(str(e))
      path = (path.group(1) or path.group(2)) if path else where or 'a file'
      return f'{os.strerror(int(code.group(1)))}: {path} ({_FIXES[int(code.group(1))]}).'
  return None


def check_choice(field: str, value, allowed) -> None:
  """Raises ConfigError naming the field, the value and the allowed ones unless value is one."""
  if value not in allowed:
    raise ConfigError(f'{field}={value!r} is not supported; choose one of {tuple(allowed)}.')


def is_directory(flag: str, path: str, fix: str) -> bool:
  """Whether the local `path` given as `flag` is an existing directory; False when it does
  not exist yet. A UserError naming `flag` and ending with `fix` when it, or a folder
  above it, is a regular file (where creating it would raise a traceback)."""
  normal = where = os.path.normpath(path)
  while where and not os.path.exists(where):
    where = os.path.dirname(where)
  if where and not os.path.isdir(where):
    place = 'is a file' if where == normal else f'lies under {where}, which is a file'
    raise UserError(f'{flag} {path} {place}: {fix}')
  return bool(where) and where == normal
