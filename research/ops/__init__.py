"""Pure array functions, no Flax and no state: convolution, pooling, kernels, boxes, RoIs."""
