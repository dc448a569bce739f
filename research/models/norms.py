"""Normalization layers the families take as their `norm` argument.

`FrozenBatchNorm` is torchvision's `torchvision.ops.FrozenBatchNorm2d`: batch norm with
fixed statistics and a fixed affine transform, which detectors use in their backbones
because their batches (one or two large images) are too small to estimate statistics.

    y = (x - mean) * scale / sqrt(var + epsilon) + bias

All four arrays live in the `batch_stats` collection (scale, bias, mean, var), not in
`params`: no optimizer updates them or keeps state for them, and the training step, which
makes `batch_stats` mutable, leaves them unchanged because this layer only reads them.
`research.convert.torchvision` maps them to torchvision's weight, bias, running_mean and
running_var.

Use it as any family's norm:

    ResNet50(num_classes=0, norm=FrozenBatchNorm)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


class FrozenBatchNorm(nn.Module):
  """Batch norm with frozen statistics and affine: x [..., C] -> [..., C].

  Attributes:
    epsilon: added to the variance (torchvision's default, 1e-5).
    dtype: the output's dtype (None: x's promoted with float32). The statistics and the
      folded scale and shift are computed in float32.
    use_running_average, momentum: accepted and ignored, so that the families can build
      this layer with the arguments they give `nn.BatchNorm`; the statistics are always
      the stored ones.
  """

  epsilon: float = 1e-5
  dtype: Any = None
  use_running_average: bool | None = None
  momentum: float | None = None

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1],)

    def stat(name, init):
      return self.variable("batch_stats", name, lambda: init(shape, jnp.float32)).value

    scale, bias = stat("scale", jnp.ones), stat("bias", jnp.zeros)
    mean, var = stat("mean", jnp.zeros), stat("var", jnp.ones)
    # torchvision folds the four arrays into one multiply-add, as here.
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    dtype = self.dtype or jnp.promote_types(x.dtype, jnp.float32)
    # No gradient flows into the frozen arrays (they are not params anyway).
    multiplier, shift = jax.lax.stop_gradient((multiplier, shift))
    return x.astype(dtype) * multiplier.astype(dtype) + shift.astype(dtype)
