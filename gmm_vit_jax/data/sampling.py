"""Which rows make each batch: a pure function of (seed, step), so a resumed run continues
with exactly the batches it would have seen."""

import functools

import numpy as np

from gmm_vit_jax import errors


class EpochSampler:
  """Training batches. One epoch is `passes` shuffled passes over the split (the reference's
  repeated-augmentation sampler: every image appears `passes` times per epoch, each time
  augmented anew); the incomplete last batch of an epoch is dropped."""

  def __init__(self, num_examples: int, batch_size: int, passes: int, seed: int):
    if num_examples * passes < batch_size:
      raise errors.ConfigError(
        f'batch_size={batch_size} is larger than an epoch '
        f'({num_examples} examples x {passes} passes).'
      )
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.passes = passes
    self.seed = seed
    self.steps_per_epoch = num_examples * passes // batch_size

  # The sampler lives as long as the run; the cache holds two epochs' orders, not more.
  @functools.lru_cache(maxsize=2)  # noqa: B019
  def _order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    return np.concatenate([rng.permutation(self.num_examples) for _ in range(self.passes)])

  def batch(self, step: int) -> np.ndarray:
    """(batch_size,) int32 row indices of training step `step` (0-based)."""
    epoch, i = divmod(step, self.steps_per_epoch)
    start = i * self.batch_size
    return self._order(epoch)[start : start + self.batch_size].astype(np.int32)


def eval_batches(num_examples: int, batch_size: int):
  """Yields (index, weight), both (batch_size,): every row once, the last batch padded with
  weight-0 copies of row 0 so every batch has the same shape (one compilation)."""
  for start in range(0, num_examples, batch_size):
    index = np.arange(start, min(start + batch_size, num_examples), dtype=np.int32)
    weight = np.ones(batch_size, np.float32)
    weight[len(index) :] = 0.0
    yield np.pad(index, (0, batch_size - len(index))), weight
