"""Attention: token grids, logit masks (GMM, ELM), score functions, the attention module."""

from gmm_vit_jax.attention.attention import Attention
from gmm_vit_jax.attention.build import make_attention, make_score
from gmm_vit_jax.attention.masks import ElementwiseMask, GaussianMixtureMask, make_mask
from gmm_vit_jax.attention.mixture_keys import MixtureOfKeysScore
from gmm_vit_jax.attention.scores import DotProductScore
