"""The train state: one pytree of arrays, what a checkpoint holds."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step: () int32; params: trainable arrays as a nested dict (nnx.to_pure_dict);
  buffers: the model's other variables (fixed embeddings), likewise; opt_state: optax's."""
  step: jax.Array
  params: Any
  buffers: Any
  opt_state: Any


@flax.struct.dataclass
class Metrics:
  """Sums over the steps since the last log, kept on the device: no host sync per step."""
  loss: jax.Array
  correct: jax.Array
  count: jax.Array
  nonfinite: jax.Array

  @classmethod
  def zeros(cls) -> 'Metrics':
    # Separate buffers: the train step donates each field.
    z = lambda: jax.numpy.zeros((), jax.numpy.float32)
    return cls(loss=z(), correct=z(), count=z(), nonfinite=z())

  def __add__(self, other: 'Metrics') -> 'Metrics':
    return jax.tree.map(lambda a, b: a + b, self, other)

  def summary(self, prefix: str) -> dict[str, float]:
    count = max(float(self.count), 1.0)
    return {f'{prefix}_loss': float(self.loss) / count,
            f'{prefix}_accuracy': float(self.correct) / count}
