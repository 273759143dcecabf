"""The trainer: optimiser, train/eval steps, checkpoints and the loop."""
