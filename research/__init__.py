"""The history of convolutional networks in JAX/Flax: ops, models, data, training, evaluation."""
