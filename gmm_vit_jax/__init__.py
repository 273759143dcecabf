"""gmm-vit-jax: vision transformers with Gaussian-mixture attention, in JAX/Flax."""

from gmm_vit_jax import storage

# Before any storage library reads its settings (gmm_vit_jax/storage.py).
storage.configure()
