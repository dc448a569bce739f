"""Layers shared by the models."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# Where the per-image weight gradient beats XLA:CPU's: outputs of at least this many
# pixels and this many FLOPs per image. Measured on two cores at batch 16 against XLA's:
# 3x3 64->64 at 224x224 2.6x, at 56x56 1.6x; VGG's 128->128 at 112x112 2.1x; 7x7/2 3->64
# (ResNet's and GoogLeNet's first layer) 4.4x; AlexNet's 11x11/4 2.0x and its 5x5 at
# 27x27 1.3x; 3x3 96->128 at 28x28 2.2x; but 3x3 256->256 at 14x14 0.9x, 512->512 at
# 7x7 0.7x, and at 28x28 5x5 16->32 (20 MFLOP an image) 0.6x, 3x3 128->32 (58) 0.5x.
PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS = 400
PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS = 100e6


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def _weight_grad_per_image(x, dy, kernel_hw, strides, pads, precision):
  """dL/dW [kh, kw, ci, co] of a 2-D convolution from its input x [N, H, W, ci] and output
  cotangent dy [N, oh, ow, co], summed one image at a time.

  Each image's taps are laid out [kh * kw * ci, oh * ow], so the product with
  dy [oh * ow, co] contracts the minor dimension of a contiguous operand, and one
  image's patches stay small; XLA:CPU's own weight gradient is a convolution with
  an oh x ow window, which runs at a fraction of the matmul speed.
  """
  (kh, kw), (sh, sw) = kernel_hw, strides
  _, oh, ow, co = dy.shape
  ci = x.shape[-1]

  def image(total, xy):
    xi, dyi = xy
    xt = jnp.pad(xi, (*pads, (0, 0))).transpose(2, 0, 1)  # [ci, H + pads, W + pads]
    taps = [
      xt[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
      for i in range(kh)
      for j in range(kw)
    ]
    patches = jnp.stack(taps).reshape(kh * kw * ci, oh * ow)
    grad = jnp.matmul(patches, dyi.reshape(oh * ow, co), precision=precision)
    return total + grad.astype(total.dtype), None

  total, _ = lax.scan(image, jnp.zeros((kh * kw * ci, co), jnp.float32), (x, dy))
  return total.reshape(kh, kw, ci, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, kernel, strides, pads, precision):
  return lax.conv_general_dilated(
    x, kernel, strides, pads, dimension_numbers=NHWC, precision=precision
  )


def _conv2d_fwd(x, kernel, strides, pads, precision):
  return _conv2d(x, kernel, strides, pads, precision), (x, kernel)


def _conv2d_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=strides,
    padding=pads,
    dimension_numbers=NHWC,
    precision=precision,
  )
  (dx,) = jax.linear_transpose(lambda x: conv(x, kernel), x)(dy)

  def library(x, dy):
    return jax.linear_transpose(lambda k: conv(x, k), kernel)(dy)[0]

  def per_image(x, dy):
    dw = _weight_grad_per_image(x, dy, kernel.shape[:2], strides, pads, precision)
    return dw.astype(kernel.dtype)

  pixels = dy.shape[1] * dy.shape[2]
  flops_per_image = 2 * pixels * kernel.size
  small = flops_per_image < PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS
  if pixels < PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS or small:
    return dx, library(x, dy)
  # Only XLA:CPU's weight gradient is slow; GPUs and TPUs keep their own.
  return dx, lax.platform_dependent(x, dy, cpu=per_image, default=library)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """`lax.conv_general_dilated` with its weight gradient computed per image
  (`_weight_grad_per_image`) where the output has at least
  `PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS` pixels and `PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS` per
  image. Only plain 2-D convolutions take that path: lhs [N, H, W, C] with
  rhs [kh, kw, C, F] -> [N, oh, ow, F] (NHWC/HWIO), no dilation, no groups, no
  negative padding; any other call goes to lax unchanged. Same forward program and
  results; reverse mode only (no jvp). On GPUs and TPUs the weight gradient stays
  XLA's own (`lax.platform_dependent`).
  """
  pads = None
  if (
    lhs.ndim == 4
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and all(d == 1 for d in (rhs_dilation or (1, 1)))
  ):
    strides = tuple(window_strides)
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if any(p < 0 for pair in pads for p in pair):
      pads = None
  if pads is None:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  return _conv2d(lhs, rhs, strides, pads, precision)


class Conv(nn.Conv):
  """`nn.Conv` (same parameters, initialization and results) for NHWC images, with
  unpadded 1x1 kernels computed as a matrix product over channels and the weight
  gradient of larger kernels computed per image (`conv_general_dilated`).

  XLA:CPU runs 1x1 convolutions far below its matmul speed (measured on two
  cores: 16x56x56x256 -> 64 at 32 GFLOP/s as a convolution, 173 as a matmul;
  their gradients at 14 and 73), and ResNet-50, DenseNet and GoogLeNet are
  mostly 1x1 convolutions. A strided 1x1 kernel reads every s-th pixel.
  """

  conv_general_dilated: Any = conv_general_dilated

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
