"""gmm-vit-jax: vision transformers with Gaussian-mixture attention, in JAX/Flax."""
