"""A validation split held out of the training split: stratified, seeded, and a pure function
of the labels and the seed, so every process and every resumed run holds out the same rows."""

import numpy as np

from gmm_vit_jax.errors import ConfigError


def check_fraction(fraction) -> float | None:
  """dataset.validation checked: None when off (None or 0), else the fraction in (0, 1)."""
  if not fraction:
    return None
  if not 0 < fraction < 1:
    raise ConfigError(
      f'dataset.validation={fraction!r} must be a fraction in (0, 1), or None '
      'or 0 for no validation split.'
    )
  return float(fraction)


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(N,) int labels -> (train_rows, validation_rows), sorted int64 row indices that partition
  range(N); each class gives round(fraction * its count) rows to validation, drawn with a
  generator seeded by (seed, class)."""
  labels = np.asarray(labels)
  held = []
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    count = int(round(fraction * len(rows)))
    held.append(np.random.default_rng([seed, int(c)]).permutation(rows)[:count])
  validation = np.sort(np.concatenate(held))
  train = np.setdiff1d(np.arange(len(labels)), validation)
  return train, validation
