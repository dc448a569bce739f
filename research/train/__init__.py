"""Training: the state, pure jit/pmap steps, the loop, checkpoints, optimizers, metric writer."""
