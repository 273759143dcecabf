"""Runs on a bucket: the quick start trained into gs:// on a local GCS emulator, killed with
-9 and resumed bit-identical, a busy workdir refused by its lock object, export from and
to gs://, predict and init_from a gs:// source, a data folder on a bucket, and a missing
bucket or emulator in one line with nothing created on the local disk.

The bucket tests run in a network namespace of their own with the emulator inside it
(tests/gcs_emulator.py): test_bucket_tests_in_a_network_namespace runs this file again
there, where STORAGE_EMULATOR_HOST points every part at the emulator.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from gmm_vit_jax import errors, reproduce, storage
from gmm_vit_jax.data import tiny_imagenet
from gmm_vit_jax.training import loop, object_lock
from tests import gcs_emulator
from tests.model_testing import QUICK_COMPILES_ENV
from tests.test_tiny_imagenet import folder  # noqa: F401  (a fixture)
from tests.test_training import _resumed_from
from tests.workdir_testing import restored_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSIDE = os.environ.get(gcs_emulator.NAMESPACE_ENV) == '1'
inside = pytest.mark.skipif(
  not INSIDE,
  reason='runs in its own network namespace, started by test_bucket_tests_in_a_network_namespace',
)
BUCKET = 'runs-bucket'
# The quick start, three short epochs of 22 steps: a checkpoint every 10 steps, an eval
# each epoch.
QUICKSTART = (
  '--config=configs/quickstart.py',
  '--config.epochs=3',
  '--config.schedule.warmup_epochs=1',
  '--config.model.depth=1',
  '--config.eval_every_epochs=1',
  '--config.checkpoint.every_steps=10',
)
TOTAL_STEPS = 3 * 22
TIMEOUT_S = 600


def test_bucket_tests_in_a_network_namespace():
  if INSIDE:
    pytest.skip('this is the run inside the namespace')
  why_not = gcs_emulator.why_no_namespace()
  if why_not:
    pytest.skip(
      f'no network namespace can be made here, so nothing runs against the emulator: {why_not}'
    )
  env = {**os.environ, gcs_emulator.NAMESPACE_ENV: '1', storage.EMULATOR_ENV: gcs_emulator.URL}
  run = subprocess.run(
    gcs_emulator.namespace_command(
      [
        sys.executable,
        '-m',
        'pytest',
        '-q',
        '-p',
        'no:xdist',
        '-p',
        'no:cacheprovider',
        os.path.abspath(__file__),
      ]
    ),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
  assert ' passed' in run.stdout and 'skipped' in run.stdout, run.stdout[-3000:]


def _start(module_or_script, *args, env=None):
  command = (
    [sys.executable, module_or_script]
    if module_or_script.endswith('.py')
    else [sys.executable, '-m', module_or_script]
  )
  return subprocess.Popen(
    [*command, *args],
    cwd=ROOT,
    env={**os.environ, **QUICK_COMPILES_ENV, **(env or {})},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _output(proc) -> str:
  return proc.communicate(timeout=TIMEOUT_S)[0]


def _wait_for_checkpoint(proc, workdir: str):
  """Waits until the run has committed a checkpoint to the bucket."""
  fs, path = storage.filesystem(storage.join(workdir, 'checkpoints'))
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and proc.poll() is None:
    fs.invalidate_cache()
    if fs.glob(f'{path}/*/commit_success.txt'):
      return
    time.sleep(0.2)
  raise AssertionError(f'no checkpoint in {workdir}; output:\n{_output(proc)[-3000:]}')


def _json(url: str) -> dict:
  return json.loads(storage.read_text(url))


@pytest.fixture(scope='module')
def bucket():
  """gs://BUCKET on the emulator, which runs for the module."""
  with gcs_emulator.running():
    fs, _ = storage.filesystem(f'gs://{BUCKET}')
    fs.mkdir(BUCKET)
    yield f'gs://{BUCKET}'


@pytest.fixture(scope='module')
def runs(bucket):
  """The processes of every test, started together so that they share the machine:
  an uninterrupted run, one killed with -9 after its first checkpoint and rerun, and
  one on a missing bucket."""
  dirs = {name: f'{bucket}/{name}' for name in ('whole', 'killed')}
  procs = {
    name: _start('train.py', *QUICKSTART, f'--workdir={dirs[name]}') for name in ('whole', 'killed')
  }
  procs['no_bucket'] = _start('train.py', *QUICKSTART, '--workdir=gs://no-such-bucket/q')
  outputs = {'no_bucket': _output(procs['no_bucket'])}
  _wait_for_checkpoint(procs['killed'], dirs['killed'])
  procs['killed'].send_signal(signal.SIGKILL)
  outputs['killed'] = _output(procs['killed'])
  killed_lock = _json(f'{dirs["killed"]}/lock')
  rerun = _start('train.py', *QUICKSTART, f'--workdir={dirs["killed"]}')
  outputs.update(whole=_output(procs['whole']), rerun=_output(rerun))
  return dict(dirs=dirs, procs={**procs, 'rerun': rerun}, outputs=outputs, killed_lock=killed_lock)


@inside
def test_a_run_on_a_bucket_killed_with_9_resumes_bit_identical(runs):
  procs, outputs, dirs = runs['procs'], runs['outputs'], runs['dirs']
  assert procs['whole'].returncode == 0, outputs['whole'][-3000:]
  assert procs['killed'].returncode == -signal.SIGKILL
  assert procs['rerun'].returncode == 0, outputs['rerun'][-3000:]
  # The lock object of the killed run names it; its rerun, on the same host, takes it over.
  assert runs['killed_lock']['pid'] == procs['killed'].pid
  assert f'Took over the lock of process {procs["killed"].pid}' in outputs['rerun']
  assert 0 < _resumed_from(outputs['rerun']) < TOTAL_STEPS
  whole, rerun = _json(f'{dirs["whole"]}/summary.json'), _json(f'{dirs["killed"]}/summary.json')
  assert rerun['completed'] and rerun['step'] == TOTAL_STEPS
  for key in ('eval_accuracy', 'eval_loss', 'best_eval_accuracy', 'best_step'):
    assert rerun[key] == whole[key], key
  for (path, want), (_, got) in zip(
    restored_state(dirs['whole'], TOTAL_STEPS), restored_state(dirs['killed'], TOTAL_STEPS)
  ):
    np.testing.assert_array_equal(got, want, err_msg=path)
  # Every file of a run is in the bucket; the lock is released at the end.
  names = storage.listdir(dirs['whole'])
  for name in (
    'config.json',
    'summary.json',
    'parameters.txt',
    'augmentation.png',
    'gmm_masks.png',
    'checkpoints',
  ):
    assert name in names, names
  assert any(n.startswith('events.out.tfevents') for n in names), names
  assert 'lock' not in names
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


@inside
def test_a_second_run_is_refused_by_the_lock_object(bucket):
  """A run on a workdir whose lock a live process (this one) holds stops at once; the
  command line prints the error as one line, as for a local workdir (test_training.py)."""
  workdir = f'{bucket}/busy'
  lock = object_lock.ObjectLock(workdir, 'lock')
  lock.acquire()
  try:
    with pytest.raises(errors.WorkdirInUseError) as refused:
      loop.train_and_evaluate(quickstart.get_config(), workdir)
  finally:
    lock.release()
  assert str(refused.value).startswith(
    f'{workdir} is in use by process {os.getpid()} on {socket.gethostname()} (since '
  )
  assert storage.listdir(workdir) == []  # Nothing written, and the lock released.


@inside
def test_a_missing_bucket_is_one_line_and_nothing_local(runs):
  out = runs['outputs']['no_bucket']
  assert runs['procs']['no_bucket'].returncode == errors.EXIT_ERROR, out[-3000:]
  lines = out.strip().splitlines()
  assert lines[-1] == (
    'error: the bucket gs://no-such-bucket of gs://no-such-bucket/q does '
    'not exist: create it (gcloud storage buckets create '
    'gs://no-such-bucket) or correct the path.'
  ), out[-3000:]
  assert sum(line.startswith('error:') for line in lines) == 1 and 'Traceback' not in out
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


@inside
@pytest.mark.parametrize(
  'emulator,message',
  [
    (
      'http://127.0.0.1:1',
      'cannot reach the storage emulator at http://127.0.0.1:1 '
      '(STORAGE_EMULATOR_HOST) for gs://b/run: ',
    ),
    # No emulator: the real service, which this namespace has no route to.
    (None, 'cannot reach the storage service at https://storage.googleapis.com for gs://b/run: '),
  ],
)
def test_unreachable_storage_is_named_without_retries(bucket, monkeypatch, emulator, message):
  if emulator:
    monkeypatch.setenv(storage.EMULATOR_ENV, emulator)
  else:
    monkeypatch.delenv(storage.EMULATOR_ENV)
  with pytest.raises(errors.StorageError) as raised:
    storage.check_reachable('gs://b/run')
  assert str(raised.value).startswith(message), raised.value


@inside
def test_export_predict_and_init_from_on_a_bucket(runs, bucket, tmp_path):
  whole, out = runs['dirs']['whole'], f'{bucket}/bundle'
  exported = _start('gmm_vit_jax.export', f'--workdir={whole}', f'--out={out}')
  text = _output(exported)
  assert exported.returncode == 0, text[-3000:]
  assert text.strip().splitlines()[-1].endswith(f'written to {out}')
  assert _json(f'{out}/source.json')['workdir'] == whole
  image = tmp_path / 'digit.png'
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
  predicted = _start('gmm_vit_jax.predict', f'--export={out}', str(image))
  tuned_dir = f'{bucket}/tuned'
  # A lock left by a process of another host whose heartbeat stopped long ago.
  storage.write_atomically(
    f'{tuned_dir}/lock',
    json.dumps(dict(pid=1, host='elsewhere', heartbeat=time.time() - 2 * object_lock.STALE_S)),
  )
  tuned = _start(
    'train.py',
    *QUICKSTART,
    f'--workdir={tuned_dir}',
    '--config.epochs=1',
    '--config.schedule.warmup_epochs=0',
    f'--config.init_from={whole}',
  )
  text = _output(predicted)
  assert predicted.returncode == 0, text[-3000:]
  assert f'{image}\n  1. ' in text, text[-3000:]
  text = _output(tuned)
  assert tuned.returncode == 0, text[-3000:]
  assert 'Took over the lock of process 1 on elsewhere' in text
  assert f'Initialised from {whole}' in text
  assert _json(f'{tuned_dir}/summary.json')['completed']


def test_paths_join_and_write_alike(tmp_path):
  assert storage.is_url('gs://b/run') and storage.is_url('s3://b') and not storage.is_url('runs/q')
  assert not storage.is_url('C:/runs')
  assert storage.join('gs://b/run/', 'checkpoints', '10') == 'gs://b/run/checkpoints/10'
  assert storage.join('runs', 'q') == os.path.join('runs', 'q')
  assert storage.absolute('gs://b/run') == 'gs://b/run'
  path = str(tmp_path / 'summary.json')
  storage.write_atomically(path, '{"a": 1}')
  storage.write_atomically(path, b'{"a": 2}')
  assert _json(path) == {'a': 2} and os.listdir(tmp_path) == ['summary.json']
  storage.check_reachable(str(tmp_path / 'not there'))  # A local path is never checked.


@inside
def test_a_data_dir_on_a_bucket_reads_like_the_local_folder(bucket, folder):  # noqa: F811
  local, _ = folder
  remote = f'{bucket}/data/tiny-imagenet-200'
  fs, path = storage.filesystem(remote)
  fs.put(local, path, recursive=True)
  for split in ('train', 'val'):
    (want_images, want_labels), (images, labels) = (
      tiny_imagenet.load(local, split),
      tiny_imagenet.load(remote, split),
    )
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


@inside
def test_reproduce_writes_its_table_to_a_bucket(bucket):
  workdir = f'{bucket}/paper'
  reproduce.write_table(
    [
      dict(
        dataset='digits',
        backbone='vit',
        plain=dict(final=[90.0], best=[91.0]),
        gmm=dict(final=[92.5], best=[93.0]),
        published=None,
      )
    ],
    workdir,
    kind='tiny models',
  )
  assert '| digits | vit | 91.00 | 90.00 |' in storage.read_text(f'{workdir}/table.md')
  assert storage.read_bytes(f'{workdir}/table.png')[:4] == b'\x89PNG'
  run = f'{workdir}/digits/gmm_vit'
  assert reproduce.finished_summary(run) is None
  storage.write_atomically(
    f'{run}/summary.json', json.dumps(dict(completed=True, eval_accuracy=0.925))
  )
  assert reproduce.finished_summary(run)['eval_accuracy'] == 0.925
