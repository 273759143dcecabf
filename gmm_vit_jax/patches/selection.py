"""Which tokens to keep: deterministic top-k, or sampling without replacement.

Selections are (B, K) int32 token indices in row-major grid order, sorted ascending
so the kept tokens stay in raster order; `models.tokens.take_tokens` gathers them.
"""

import jax
import jax.numpy as jnp
import ml_collections

from gmm_vit_jax.errors import ConfigError, check_choice
from gmm_vit_jax.models.tokens import check_patch_size
from gmm_vit_jax.patches.scores import SCORE_KINDS, patch_scores

KINDS = ('none',) + SCORE_KINDS
SELECTIONS = ('topk', 'sample')
MODES = ('drop', 'zero')
# Patches of probability 0 rank below every patch of positive probability: the
# latter's perturbed log-probabilities are above about -110 in float32.
ZERO_PROBABILITY_OFFSET = -1e4


def num_kept(num_tokens: int, keep: float) -> int:
  """K = round(keep * N), at least one token."""
  if not 0.0 < keep <= 1.0:
    raise ConfigError(f'patch_selection.keep={keep} must be in (0, 1].')
  return max(1, min(num_tokens, round(keep * num_tokens)))


def top_k_index(scores: jax.Array, k: int) -> jax.Array:
  """(B, N) scores -> (B, k) int32 indices of the k highest, sorted ascending."""
  _, index = jax.lax.top_k(scores, k)
  return jnp.sort(index, axis=-1).astype(jnp.int32)


def sampling_probabilities(scores: jax.Array) -> jax.Array:
  """(B, N) -> (B, N) min-max normalised scores (uniform where all scores are equal).

  As in the reference the lowest-scoring patch gets probability 0; the weights are
  not normalised to sum to 1, which sampling does not need.
  """
  low = jnp.min(scores, axis=-1, keepdims=True)
  spread = jnp.max(scores, axis=-1, keepdims=True) - low
  return jnp.where(spread > 0, (scores - low) / jnp.where(spread > 0, spread, 1.0), 1.0)


def sample_index(scores: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """(B, N) scores -> (B, k) int32: k patches drawn without replacement, sorted ascending.

  Each draw picks a remaining patch with probability proportional to its min-max
  normalised score. The top k of log p + Gumbel noise has exactly that law (the
  Gumbel-top-k trick). When fewer than k patches have positive probability, the rest
  are filled uniformly from the zero-probability ones, where the reference would fail.
  """
  p = sampling_probabilities(scores)
  noise = jax.random.gumbel(key, scores.shape, jnp.float32)
  perturbed = jnp.where(
    p > 0, jnp.log(jnp.where(p > 0, p, 1.0)) + noise, ZERO_PROBABILITY_OFFSET + noise
  )
  return top_k_index(perturbed, k)


def check_config(cfg: ml_collections.ConfigDict) -> None:
  check_choice('patch_selection.kind', cfg.kind, KINDS)
  check_choice('patch_selection.selection', cfg.selection, SELECTIONS)
  check_choice('patch_selection.mode', cfg.mode, MODES)
  num_kept(1, cfg.keep)
  if not isinstance(cfg.entropy_bins, int) or cfg.entropy_bins < 1:
    raise ConfigError(
      f'patch_selection.entropy_bins must be a positive integer, got {cfg.entropy_bins!r}.'
    )


def select_tokens(
  images: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict, *, patch_size: int
) -> jax.Array:
  """(B, H, W, C) float images in [0, 1] -> (B, K) int32 kept token indices, ascending.

  cfg: the `patch_selection` config section. Normalised images must be brought back
  to [0, 1] first (x * std + mean). Kind 'none' keeps every token.
  """
  check_config(cfg)
  b, h, w, _ = images.shape
  n = check_patch_size(h, patch_size) * check_patch_size(w, patch_size)
  if cfg.kind == 'none':
    return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  score_key, sample_key = jax.random.split(key)
  scores = patch_scores(images, cfg.kind, patch_size, score_key, entropy_bins=cfg.entropy_bins)
  k = num_kept(n, cfg.keep)
  if cfg.selection == 'topk':
    return top_k_index(scores, k)
  return sample_index(scores, k, sample_key)


def kept_mask(token_index: jax.Array, num_tokens: int) -> jax.Array:
  """(B, K) indices -> (B, N) bool, True for kept tokens."""
  return jnp.any(token_index[:, :, None] == jnp.arange(num_tokens)[None, None, :], axis=1)


def zero_dropped_patches(
  images: jax.Array, token_index: jax.Array, *, patch_size: int
) -> jax.Array:
  """Mode 'zero': the pixels of patches not in token_index set to 0, shape kept.

  What the reference did; the model still sees every token, so nothing is saved.
  """
  b, h, w, c = images.shape
  gh, gw = h // patch_size, w // patch_size
  keep = kept_mask(token_index, gh * gw).reshape(b, gh, 1, gw, 1, 1)
  tiles = images.reshape(b, gh, patch_size, gw, patch_size, c)
  return jnp.where(keep, tiles, 0).astype(images.dtype).reshape(images.shape)
