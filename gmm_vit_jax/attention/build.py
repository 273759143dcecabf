"""Builds an attention layer from the `model.attention` and `model.mask` configs."""

from collections.abc import Callable

import ml_collections
from flax import nnx

from gmm_vit_jax.attention.attention import Attention
from gmm_vit_jax.attention.masks import make_mask
from gmm_vit_jax.attention.mixture_keys import MixtureOfKeysScore
from gmm_vit_jax.attention.scores import DotProductScore
from gmm_vit_jax.errors import check_choice
from gmm_vit_jax.initializers import dense_init

SCORE_KINDS = ('dot_product', 'mixture_of_keys')


def make_score(
  attention: ml_collections.ConfigDict,
  *,
  dim: int,
  num_heads: int,
  head_dim: int,
  dtype,
  rngs: nnx.Rngs,
  scale: float | None = None,
  grid_shape: tuple[int, int] | None = None,
  kernel_init: Callable = dense_init,
) -> nnx.Module:
  """The score named by `attention.score`; 'mixture_of_keys' reads `attention.mixture`.

  kernel_init: the key projections' initialiser. `scale` overrides the 1/sqrt(head_dim)
  dot-product logit scale (T2T's token transformer); mixture-of-keys scores have their own
  variances instead.
  """
  check_choice('model.attention.score', attention.score, SCORE_KINDS)
  if attention.score == 'mixture_of_keys':
    if 'mixture' not in attention:
      raise ValueError(
        "model.attention.score='mixture_of_keys' needs a model.attention.mixture "
        "section (gmm_vit_jax/configs_common.py: attention('mixture_of_keys'))."
      )
    mixture = attention.mixture
    return MixtureOfKeysScore(
      dim,
      num_heads=num_heads,
      head_dim=head_dim,
      num_keys=mixture.num_keys,
      variant=mixture.variant,
      e_step=mixture.e_step,
      pi=mixture.pi,
      pi_scope=mixture.pi_scope,
      learn_variance=mixture.learn_variance,
      use_bias=attention.qkv_bias,
      grid_shape=grid_shape,
      dtype=dtype,
      kernel_init=kernel_init,
      rngs=rngs,
    )
  return DotProductScore(
    dim,
    num_heads=num_heads,
    head_dim=head_dim,
    use_bias=attention.qkv_bias,
    scale=scale,
    dtype=dtype,
    kernel_init=kernel_init,
    rngs=rngs,
  )


def make_attention(
  attention: ml_collections.ConfigDict,
  mask: ml_collections.ConfigDict,
  *,
  dim: int,
  num_heads: int,
  head_dim: int,
  grid_shape: tuple[int, int],
  dropout: float,
  dtype,
  rngs: nnx.Rngs,
  scale: float | None = None,
  query_init: Callable = dense_init,
  key_value_init: Callable = dense_init,
  **kwargs,
) -> Attention:
  """One attention layer; `kwargs` carry a backbone's own options (pre_softmax, ...).

  query_init, key_value_init: kernel initialisers of the query and of the key and value
  projections (initializers.fused_dense_init where the reference fuses them).
  """
  return Attention(
    dim,
    num_heads=num_heads,
    head_dim=head_dim,
    score=make_score(
      attention,
      dim=dim,
      num_heads=num_heads,
      head_dim=head_dim,
      dtype=dtype,
      rngs=rngs,
      scale=scale,
      grid_shape=grid_shape,
      kernel_init=key_value_init,
    ),
    mask=make_mask(
      mask.kind,
      num_heads=num_heads,
      grid_shape=grid_shape,
      num_kernels=mask.num_kernels,
      mode=mask.mode,
      cutoff=mask.cutoff,
      rngs=rngs,
    ),
    qkv_bias=attention.qkv_bias,
    dropout=dropout,
    implementation=attention.implementation,
    max_slices=attention.max_slices,
    dtype=dtype,
    query_init=query_init,
    value_init=key_value_init,
    rngs=rngs,
    **kwargs,
  )
