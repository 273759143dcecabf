"""Cost measurements, each runnable as `python -m gmm_vit_jax.benchmarks.NAME`."""
