"""Data parallelism, declared once: a 1-D mesh over every device, batch split on 'data'.

Parameters and optimiser state are replicated; each device computes its slice of the
global batch and XLA inserts the gradient all-reduce. Multi-host runs build the same
mesh over all processes' devices; each process supplies its own rows of the batch.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from gmm_vit_jax import errors

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  # Auto axes: XLA propagates the batch sharding through the model, whose code then
  # carries no sharding annotations at all.
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(field: str, batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise errors.ConfigError(
      f'{field}={batch_size} does not divide by the {devices} devices of the mesh; '
      f'use a multiple of {devices}, e.g. {max(devices, batch_size // devices * devices)}.'
    )


def put_replicated(tree, mesh: Mesh):
  """A pytree of host arrays, identical on every process -> copies on every device.

  Each process places its own copy on its own devices; jax.device_put would first
  gather every process's copy to check they agree, the whole dataset included.
  """
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index: np.asarray(x)[index]
    ),
    tree,
  )


def global_batch(rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a global batch computed identically on every process, split on 'data'.

  rows: (B, ...) the whole global batch. Each process transfers only the slices of its
  own devices, wherever the mesh puts them, so the rows reach the same devices as in
  a single-process run over the same mesh.
  """
  return jax.make_array_from_callback(rows.shape, batch_sharded(mesh), lambda index: rows[index])
