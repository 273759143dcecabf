"""The trainer: sharding, optimiser, train/eval steps, checkpoints and the loop."""
