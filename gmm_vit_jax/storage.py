"""Paths that are local folders or storage URLs (gs://BUCKET/..., any fsspec URL) alike.

Checkpoints go through orbax and tensorstore, which take both; every other file of a
run, a bundle or a table goes through the few helpers here (etils.epath over fsspec, so
gcsfs for gs://). `configure` runs when the package is imported: with
STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT set, it points gcsfs, epath and tensorstore
at that emulator with fixed anonymous credentials, and never at a metadata server.
"""

import os
import re
import shutil
import socket
import urllib.parse

from gmm_vit_jax import errors

EMULATOR_ENV = 'STORAGE_EMULATOR_HOST'
# A URL is a scheme of two or more characters (a Windows drive letter is one) and '://'.
_URL = re.compile(r'^([a-zA-Z][a-zA-Z0-9+.-]+)://')
# Where credential lookups would go, pointed at a closed local port while an emulator is
# set: a login or a cloud metadata server is never asked.
_NO_METADATA_SERVER = '127.0.0.1:9'
GCS_ENDPOINT = 'https://storage.googleapis.com'


def configure() -> None:
  """Sets the environment every storage library reads, before any of them starts.

  epath goes through fsspec for every URL (its TensorFlow backend cannot be pointed at an
  emulator). With STORAGE_EMULATOR_HOST set, tensorstore and gcsfs talk to it with fixed
  credentials. Values a user set already are kept.
  """
  os.environ.setdefault('EPATH_USE_TF', 'false')
  emulator = os.environ.get(EMULATOR_ENV)
  if not emulator:
    return
  if '://' not in emulator:
    emulator = f'http://{emulator}'
  for name, value in (
    ('TENSORSTORE_GCS_HTTP_URL', emulator),
    ('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator'),
    # gcsfs's default file system asks a gRPC service of its own, which
    # no emulator has, what kind of bucket it writes to.
    ('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false'),
    ('NO_GCE_CHECK', 'true'),
    ('GCE_METADATA_HOST', _NO_METADATA_SERVER),
    ('GCE_METADATA_IP', _NO_METADATA_SERVER),
    ('GCE_METADATA_ROOT', _NO_METADATA_SERVER),
  ):
    os.environ.setdefault(name, value)
  import fsspec.config

  for protocol in ('gs', 'gcs'):
    fsspec.config.conf.setdefault(protocol, {}).setdefault('token', 'anon')


def is_url(path: str) -> bool:
  """Whether `path` is a storage URL such as gs://bucket/run (not a local path)."""
  return bool(_URL.match(str(path)))


def join(base: str, *names: str) -> str:
  """`base`/`names`..., a URL for a URL base (no local path mangling of 'gs://')."""
  if is_url(base):
    return '/'.join([str(base).rstrip('/'), *(n.strip('/') for n in names)])
  return os.path.join(base, *names)


def absolute(path: str) -> str:
  """A URL as it is, a local path made absolute."""
  return str(path) if is_url(path) else os.path.abspath(path)


def _epath(path: str):
  from etils import epath

  return epath.Path(path)


def filesystem(path: str):
  """(fsspec file system, path within it) of a URL."""
  import fsspec

  return fsspec.core.url_to_fs(path)


def open_file(path: str, mode: str = 'r'):
  """A file object of a local path or a URL."""
  return _epath(path).open(mode)


def exists(path: str) -> bool:
  return _epath(path).exists()


def isfile(path: str) -> bool:
  return _epath(path).is_file()


def isdir(path: str) -> bool:
  """A local folder, or a URL prefix that holds objects."""
  return _epath(path).is_dir()


def listdir(path: str) -> list[str]:
  """The names in a folder; [] where it does not exist."""
  if is_url(path):
    fs, inner = filesystem(path)
    # Listings are cached per process; other processes and hosts write to the same prefix.
    fs.invalidate_cache(inner)
    names = (
      {
        p.rstrip('/').rsplit('/', 1)[-1]
        for p in fs.ls(inner, detail=False)
        if p.rstrip('/') != inner.rstrip('/')
      }
      if fs.isdir(inner)
      else set()
    )
    return sorted(names)
  directory = _epath(path)
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def names_in(flag: str, path: str, fix: str) -> list[str]:
  """The names in the folder `path` given as `flag`, [] where it does not exist yet; a
  UserError ending with `fix` where a local `path` is, or lies under, a regular file."""
  if is_url(path):
    return listdir(path)
  return os.listdir(path) if errors.is_directory(flag, path, fix) else []


def walk(path: str):
  """os.walk of a local folder or a URL prefix: (folder, subfolder names, file names)."""
  if not is_url(path):
    yield from os.walk(path)
    return
  fs, inner = filesystem(path)
  scheme = _URL.match(path).group(1)
  for root, folders, files in fs.walk(inner):
    yield f'{scheme}://{root}', folders, files


def makedirs(path: str) -> None:
  """Creates a local folder and its parents; a URL needs none (objects carry their path)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  return _epath(path).read_bytes()


def read_text(path: str) -> str:
  return _epath(path).read_text()


def write_atomically(path: str, data: str | bytes) -> None:
  """Writes `path` so that a reader sees the old content or the new, never part of it.

  A local file is written beside and renamed over; an object of a bucket is replaced
  whole by its one upload.
  """
  binary = isinstance(data, bytes)
  if is_url(path):
    with open_file(path, 'wb' if binary else 'w') as f:
      f.write(data)
    return
  temporary = f'{path}.tmp'
  with open(temporary, 'wb' if binary else 'w') as f:
    f.write(data)
  os.replace(temporary, path)


def move(source: str, destination: str) -> None:
  """Moves a file or folder (a bucket's objects under a prefix) to `destination`."""
  if is_url(source):
    fs, path = filesystem(source)
    fs.mv(path, filesystem(destination)[1], recursive=True)
  else:
    shutil.move(source, destination)


def check_reachable(path: str) -> None:
  """A StorageError naming the cause and the fix when the bucket of the URL `path` does not
  exist or its storage cannot be reached; nothing for a local path.

  Called before a command creates anything, so a mistyped bucket leaves no trace.
  """
  if not is_url(path):
    return
  scheme = _URL.match(path).group(1)
  emulator = os.environ.get(EMULATOR_ENV)
  endpoint = emulator or (GCS_ENDPOINT if scheme in ('gs', 'gcs') else None)
  if endpoint:
    # Fails in seconds where the file system's retries would take minutes.
    address = urllib.parse.urlsplit(endpoint if '://' in endpoint else f'http://{endpoint}')
    try:
      port = address.port or (443 if address.scheme == 'https' else 80)
      socket.create_connection((address.hostname, port), timeout=10).close()
    except OSError as e:
      where = (
        f'the storage emulator at {emulator} ({EMULATOR_ENV})'
        if emulator
        else f'the storage service at {endpoint}'
      )
      fix = (
        f'Start it, or unset {EMULATOR_ENV} to use the real service'
        if emulator
        else 'Check the network, or use a local path'
      )
      raise errors.StorageError(
        f'cannot reach {where} for {path}: {e.strerror or e}. {fix}.'
      ) from None
  fs, inner = filesystem(path)
  bucket = inner.split('/')[0]
  try:
    fs.info(bucket)
  except FileNotFoundError:
    raise errors.StorageError(
      f'the bucket {scheme}://{bucket} of {path} does not exist: create it (gcloud storage '
      f'buckets create {scheme}://{bucket}) or correct the path.'
    ) from None
  except PermissionError:
    return  # Object rights without bucket rights: the objects' own calls will tell.
  except Exception as e:  # pylint: disable=broad-except
    raise errors.StorageError(
      f'cannot reach the storage of {path}: {type(e).__name__}: '
      f'{str(e).splitlines()[0][:200] if str(e) else ""}. Check the network and the '
      'credentials, or use a local path.'
    ) from None
