"""A 2-D convolution whose weight gradient is summed one image at a time (CPU).

XLA:CPU computes a convolution's weight gradient as a convolution whose window is
the whole output map, in a slow emitter; one matrix product per image is faster
where the output is large. This is the `lax` path of research.models.layers;
the oneDNN path (research.ops.onednn) replaces it where the extension runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# Where the per-image weight gradient beats XLA:CPU's: outputs of at least this many
# pixels and this many FLOPs per image. `python benchmarks/conv_layers.py --per-image`
# measures both on the layers below (two cores, batch 16): 3x3 64->64 at 224x224 2.6x
# XLA's speed, at 56x56 1.6x; VGG's 128->128 at 112x112 2.1x; 7x7/2 3->64 (ResNet's and
# GoogLeNet's first layer) 4.4x; AlexNet's 11x11/4 2.0x and its 5x5 at 27x27 1.3x; 3x3
# 96->128 at 28x28 2.2x; but 3x3 256->256 at 14x14 0.9x, 512->512 at 7x7 0.7x, and at
# 28x28 5x5 16->32 (20 MFLOP an image) 0.6x, 3x3 128->32 (58) 0.5x.
PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS = 400
PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS = 100e6


def weight_grad_per_image(x, dy, kernel_hw, strides, pads, precision=None):
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
def conv2d(x, kernel, strides, pads, precision):
  """`lax.conv_general_dilated(x, kernel, strides, pads)` for x [N, H, W, ci] and kernel
  [kh, kw, ci, co] (NHWC/HWIO, no dilation or groups, pads ((t, b), (l, r)) >= 0), whose
  weight gradient on the CPU is `weight_grad_per_image` where the output has at least
  `PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS` pixels and `PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS` per
  image. Reverse mode only (no jvp); GPUs and TPUs keep XLA's gradient."""
  return lax.conv_general_dilated(
    x, kernel, strides, pads, dimension_numbers=NHWC, precision=precision
  )


def _conv2d_fwd(x, kernel, strides, pads, precision):
  return conv2d(x, kernel, strides, pads, precision), (x, kernel)


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
    dw = weight_grad_per_image(x, dy, kernel.shape[:2], strides, pads, precision)
    return dw.astype(kernel.dtype)

  pixels = dy.shape[1] * dy.shape[2]
  flops_per_image = 2 * pixels * kernel.size
  small = flops_per_image < PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS
  if pixels < PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS or small:
    return dx, library(x, dy)
  # Only XLA:CPU's weight gradient is slow; GPUs and TPUs keep their own.
  return dx, lax.platform_dependent(x, dy, cpu=per_image, default=library)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
