"""Layers shared by the models."""

from __future__ import annotations

import flax.linen as nn
from jax import lax


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class Conv(nn.Conv):
  """`nn.Conv` (same parameters, initialization and results) for NHWC images, with
  unpadded 1x1 kernels computed as a matrix product over channels.

  XLA:CPU runs 1x1 convolutions far below its matmul speed (measured on two
  cores: 16x56x56x256 -> 64 at 32 GFLOP/s as a convolution, 173 as a matmul;
  their gradients at 14 and 73), and ResNet-50, DenseNet and GoogLeNet are
  mostly 1x1 convolutions. A strided 1x1 kernel reads every s-th pixel.
  """

  @nn.compact
  def __call__(self, inputs):
    pointwise = (
      _pair(self.kernel_size) == (1, 1)
      and self.padding in (0, "VALID", ((0, 0), (0, 0)))
      and self.feature_group_count == 1
      and _pair(self.kernel_dilation or 1) == (1, 1)
      and _pair(self.input_dilation or 1) == (1, 1)
      and inputs.ndim == 4
    )
    if not pointwise:
      return super().__call__(inputs)
    shape = (1, 1, inputs.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    sh, sw = _pair(self.strides or 1)
    x = inputs[:, ::sh, ::sw]
    y = lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=self.precision)
    return y if bias is None else y + bias
