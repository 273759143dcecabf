"""Weight initialisers shared by the backbones (those of the reference code)."""

from flax import nnx

# Linear and conv weights: xavier-normal, biases zero (the reference's init_weights).
dense_init = nnx.initializers.xavier_normal()
# Position embeddings and CLS tokens: standard normal (torch.randn in the reference).
embedding_init = nnx.initializers.normal(stddev=1.0)
