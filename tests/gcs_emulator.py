"""A local GCS emulator for the storage tests, and the network namespace they run in.

The emulator is gcp-storage-emulator (requirements-dev.txt), in memory, on 127.0.0.1.
Two things GCS does that it does not are added here: the upload precondition the workdir
lock relies on (ifGenerationMatch=0: create the object only if absent, else HTTP 412), and
the x-goog-generation header of a download, which tensorstore (orbax's checkpoints) reads.

    python -m tests.gcs_emulator PORT [BUCKET]    # serves until killed

The tests run in a network namespace of their own (`unshare -n`, with only a loopback
device), the emulator inside it too: nothing they do can reach beyond the machine.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from http import HTTPStatus

# Set in the environment of a process that runs inside the namespace.
NAMESPACE_ENV = 'GMM_VIT_JAX_TEST_NETNS'
PORT = 9023  # The namespace is new: no other process listens on anything in it.
URL = f'http://127.0.0.1:{PORT}'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _create_only_if_absent(insert):
  """objects.insert of the emulator, refusing an upload with ifGenerationMatch=0 for an
  object that exists."""
  from gcp_storage_emulator.exceptions import NotFound

  def checked(request, response, storage, *args, **kwargs):
    if request.query.get('ifGenerationMatch') == ['0']:
      name = (request.query.get('name') or [None])[0]
      if name is None and isinstance(request.data, dict):
        name = (request.data.get('meta') or {}).get('name')
      try:
        storage.get_file_obj(request.params['bucket_name'], name)
      except NotFound:
        pass
      else:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({'error': {'code': 412, 'message': 'conditionNotMet'}})
        return None
    return insert(request, response, storage, *args, **kwargs)

  return checked


def _with_generation(download):
  """objects.download of the emulator, with the object's generation in the headers."""
  from gcp_storage_emulator.exceptions import NotFound

  def with_headers(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except NotFound:
      obj = None
    if obj is not None:
      response['x-goog-generation'] = obj['generation']
      response['x-goog-metageneration'] = obj['metageneration']
    return download(request, response, storage, *args, **kwargs)

  return with_headers


def serve(port: int, bucket: str | None = None) -> None:
  """Serves on 127.0.0.1:`port` until killed, with `bucket` created if given."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  for name, wrap in (('insert', _create_only_if_absent), ('download', _with_generation)):
    original = getattr(objects, name)
    wrapped = wrap(original)
    for _, handlers in server.HANDLERS:
      for method, handler in handlers.items():
        if handler is original:
          handlers[method] = wrapped
    setattr(objects, name, wrapped)
  server.create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket).run()


@contextlib.contextmanager
def running(timeout_s: float = 30.0):
  """The emulator on 127.0.0.1:PORT for the block; yields its URL."""
  proc = subprocess.Popen(
    [sys.executable, '-m', 'tests.gcs_emulator', str(PORT)],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + timeout_s
    while True:
      try:
        socket.create_connection(('127.0.0.1', PORT), 0.2).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f'the GCS emulator did not start (exit {proc.poll()})') from None
        time.sleep(0.05)
    yield URL
  finally:
    proc.kill()
    proc.wait()


def namespace_command(command: list[str]) -> list[str]:
  """`command` run in a new network namespace whose loopback device is up."""
  return ['unshare', '--net', 'sh', '-c', 'ip link set lo up && exec "$@"', 'sh', *command]


def why_no_namespace() -> str | None:
  """Why a network namespace cannot be made here (unshare needs root or user namespaces),
  or None."""
  try:
    made = subprocess.run(namespace_command(['true']), capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f'unshare -n fails: {e}'
  return None if made.returncode == 0 else f'unshare -n fails: {made.stderr.strip()}'


if __name__ == '__main__':
  serve(int(sys.argv[1]), *sys.argv[2:3])
