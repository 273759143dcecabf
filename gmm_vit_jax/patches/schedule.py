"""How often the patch filter is applied: one coin per batch, decaying over epochs."""

import ml_collections

from gmm_vit_jax.errors import ConfigError


def application_probability(cfg: ml_collections.ConfigDict, epoch: int) -> float:
  """The probability that a training batch of `epoch` (0-based) is filtered.

  The reference keeps p in place and, as each epoch e >= 1 begins, sets
  p <- p / (1 + decay * e), so p_e = p_0 / prod_{e'=1..e} (1 + decay * e').
  cfg: the `patch_selection` config section; kind 'none' is never applied.
  """
  if cfg.kind == 'none':
    return 0.0
  if not 0.0 <= cfg.probability <= 1.0:
    raise ConfigError(f'patch_selection.probability={cfg.probability} must be in [0, 1].')
  if cfg.decay < 0:
    raise ConfigError(f'patch_selection.decay={cfg.decay} must be >= 0.')
  if epoch < 0:
    raise ValueError(f'epoch={epoch} must be >= 0.')
  p = float(cfg.probability)
  for e in range(1, epoch + 1):
    p /= 1.0 + cfg.decay * e
  return p
