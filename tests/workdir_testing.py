"""Reading a run directory back in tests: its files, checkpoints and summary as written."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from gmm_vit_jax import storage


def files_with_times(workdir: str) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime_ns)} of every file but the lock, whose holder line is
  rewritten by every process that takes it."""
  found = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if os.path.relpath(path, workdir) != 'lock':
        stat = os.stat(path)
        found[os.path.relpath(path, workdir)] = (stat.st_size, stat.st_mtime_ns)
  return found


def restored_state(workdir: str, step: int) -> list[tuple[str, np.ndarray]]:
  """(path, value) of every array of the train state saved at `step`, read as stored;
  `workdir` a local folder or a storage URL."""
  manager = ocp.CheckpointManager(
    storage.join(storage.absolute(workdir), 'checkpoints'),
    options=ocp.CheckpointManagerOptions(create=False),
  )
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  leaves, _ = jax.tree.flatten_with_path(state)
  return [(jax.tree_util.keystr(path), np.asarray(x)) for path, x in leaves]


def _reject(constant: str):
  raise ValueError(f'{constant} is not JSON')


def strict_json(path: str):
  """The JSON file at `path`; a ValueError for NaN or Infinity, which JSON does not have."""
  with open(path) as f:
    return json.load(f, parse_constant=_reject)
