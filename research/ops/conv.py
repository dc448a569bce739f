"""The convolution itself: output-size arithmetic, correlation and true convolution.

`correlate2d` is written from the formula a conv layer computes,

    out[i, j, f] = sum_{m, n, c} I[i*s + m, j*s + n, c] * K[m, n, c, f]

over the zero-padded image: it gathers I[i*s + m, j*s + n, c] for every output
pixel (i, j) and kernel tap (m, n) by exactly those indices, then sums the
products over m, n and c in one einsum. `correlate2d_lax` computes the same
numbers through `jax.lax.conv_general_dilated`, the primitive the Flax layers
use, so the two can be checked against each other.

Shape conventions shared by every function here:

    image [H, W]       with kernel [kh, kw]        -> [oh, ow]
    image [H, W, C]    with kernel [kh, kw, C, F]  -> [oh, ow, F]
    image [H, W]       with kernel [kh, kw, 1, F]  -> [oh, ow, F]
    image [H, W, C]    with kernel [kh, kw]        -> [oh, ow, C]  (depthwise)

A 2-D kernel with a multi-channel image is applied to each channel separately,
the way a blur or an edge filter is applied to an RGB picture.

`stride` and `padding` are an int or a pair (rows, cols). They set shapes, so
under `jax.jit` they must be static (`static_argnames=("stride", "padding")`).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "output_size",
  "correlate2d",
  "convolve2d",
  "correlate2d_lax",
]


def _as_int(value, name: str, fn: str) -> int:
  try:
    return operator.index(value)
  except TypeError:
    raise ValueError(
      f"{fn}: {name} must be an int, got {value!r} ({type(value).__name__})"
    ) from None


def _pair(value, name: str, fn: str | None = None, *, positive: bool = False) -> tuple[int, int]:
  """An int or a (rows, cols) pair -> a pair of ints; the one parser of strides, paddings,
  windows and patch sizes in research.ops and research.interpret.

  positive=False (ops' strides and paddings, whose ranges the caller checks): a pair is a
  tuple or list. positive=True (occluder patches and strides): a pair may also be an array,
  and every entry must be >= 1.
  """
  if positive:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in pair):
      prefix = f"{fn}: " if fn else ""
      raise ValueError(f"{prefix}{name}: expected a positive int or a pair of them, got {value!r}.")
    return int(pair[0]), int(pair[1])
  if isinstance(value, (tuple, list)):
    if len(value) != 2:
      raise ValueError(f"{fn}: {name} must be an int or a pair (rows, cols), got {value!r}")
    return (_as_int(value[0], name, fn), _as_int(value[1], name, fn))
  v = _as_int(value, name, fn)
  return (v, v)


def output_size(n: int, k: int, stride: int = 1, padding: int = 0) -> int:
  """Length of a correlation output along one axis.

  n: input length, k: kernel length, stride >= 1, padding >= 0 (zeros added on
  each side). Returns `(n - k + 2*padding) // stride + 1`; raises ValueError
  when that is not positive, i.e. when the kernel does not fit once.
  """
  n = _as_int(n, "n", "output_size")
  k = _as_int(k, "k", "output_size")
  stride = _as_int(stride, "stride", "output_size")
  padding = _as_int(padding, "padding", "output_size")
  if k < 1:
    raise ValueError(f"output_size: k must be >= 1, got k={k}")
  if stride < 1:
    raise ValueError(f"output_size: stride must be >= 1, got stride={stride}")
  if padding < 0:
    raise ValueError(f"output_size: padding must be >= 0, got padding={padding}")
  size = (n - k + 2 * padding) // stride + 1
  if size < 1:
    raise ValueError(
      f"output_size: n={n}, k={k}, stride={stride}, padding={padding} give no "
      f"output: the padded length n + 2*padding = {n + 2 * padding} is smaller "
      f"than k={k}"
    )
  return size


def _float_dtype(*arrays):
  dtype = jnp.result_type(*arrays)
  # Integer images (uint8 pictures) would overflow or truncate the weighted sums.
  return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32


def _prepare(image, kernel, stride, padding, fn: str):
  """Validates and brings the operands to image [H, W, C] and kernel [kh, kw, C, F].

  Returns (image, kernel, depthwise, squeeze, stride, padding, out_hw). For the
  depthwise case the kernel stays [kh, kw]; `squeeze` says the caller gave a
  2-D image and a 2-D kernel and expects a 2-D result.
  """
  image = jnp.asarray(image)
  kernel = jnp.asarray(kernel)
  # Messages quote the shapes the caller passed, not the reshaped ones.
  image_shape, kernel_shape = image.shape, kernel.shape
  dtype = _float_dtype(image, kernel)
  image, kernel = image.astype(dtype), kernel.astype(dtype)
  stride = _pair(stride, "stride", fn)
  padding = _pair(padding, "padding", fn)
  if min(stride) < 1:
    raise ValueError(f"{fn}: stride must be >= 1, got stride={stride}")
  if min(padding) < 0:
    raise ValueError(f"{fn}: padding must be >= 0, got padding={padding}")

  if image.ndim not in (2, 3):
    raise ValueError(f"{fn}: image must be [H, W] or [H, W, C], got shape {image.shape}")
  if kernel.ndim not in (2, 4):
    raise ValueError(f"{fn}: kernel must be [kh, kw] or [kh, kw, C, F], got shape {kernel.shape}")
  squeeze = image.ndim == 2 and kernel.ndim == 2
  depthwise = image.ndim == 3 and kernel.ndim == 2
  if image.ndim == 2:
    image = image[:, :, None]
  if squeeze:
    kernel = kernel[:, :, None, None]
  if kernel.ndim == 4 and kernel.shape[2] != image.shape[2]:
    raise ValueError(
      f"{fn}: kernel [kh, kw, C, F] must have C = {image.shape[2]} input "
      f"channels to match image of shape {image_shape}, got kernel shape "
      f"{kernel_shape}"
    )

  (h, w), (kh, kw) = image.shape[:2], kernel.shape[:2]
  if kh < 1 or kw < 1:
    raise ValueError(f"{fn}: kernel must be non-empty, got kernel shape {kernel_shape}")
  if kh > h + 2 * padding[0] or kw > w + 2 * padding[1]:
    raise ValueError(
      f"{fn}: kernel spatial size ({kh}, {kw}) must fit in the padded image "
      f"({h + 2 * padding[0]}, {w + 2 * padding[1]}) (image shape {image_shape}, "
      f"padding {padding}), got kernel shape {kernel_shape}"
    )
  out_hw = (
    output_size(h, kh, stride[0], padding[0]),
    output_size(w, kw, stride[1], padding[1]),
  )
  return image, kernel, depthwise, squeeze, stride, padding, out_hw


@functools.partial(jax.jit, static_argnames=("stride", "padding", "out_hw", "depthwise"))
def _correlate(image, kernel, *, stride, padding, out_hw, depthwise):
  """image [H, W, C], kernel [kh, kw, C, F] (or [kh, kw] when depthwise) -> [oh, ow, F or C]."""
  (sh, sw), (ph, pw), (oh, ow) = stride, padding, out_hw
  padded = jnp.pad(image, ((ph, ph), (pw, pw), (0, 0)))
  kh, kw = kernel.shape[:2]
  # The formula's indices, I[i*sh + m, j*sw + n]: row i*sh + m for every output
  # row i and kernel row m, likewise for columns. One gather with them hands
  # each output pixel its receptive field; the sum over m, n, c is then a
  # single contraction (kh*kw separate slices would compile far slower).
  rows = np.arange(oh)[:, None] * sh + np.arange(kh)[None, :]  # [oh, kh]
  cols = np.arange(ow)[:, None] * sw + np.arange(kw)[None, :]  # [ow, kw]
  seen = padded[rows[:, None, :, None], cols[None, :, None, :]]  # [oh, ow, kh, kw, C]
  if depthwise:
    return jnp.einsum("ijmnc,mn->ijc", seen, kernel, precision=lax.Precision.HIGHEST)
  return jnp.einsum("ijmnc,mncf->ijf", seen, kernel, precision=lax.Precision.HIGHEST)


def correlate2d(image, kernel, *, stride=1, padding=0) -> jax.Array:
  """Cross-correlation: what a convolutional layer computes.

  out[i, j, f] = sum_{m, n, c} I[i*sh + m, j*sw + n, c] * K[m, n, c, f] over the
  image zero-padded by `padding`.

  image: [H, W] or [H, W, C]; kernel: [kh, kw] or [kh, kw, C, F].
  stride, padding: int or (rows, cols).
  Returns [oh, ow] (2-D image, 2-D kernel), [oh, ow, F] (kernel [kh, kw, C, F],
  with C = 1 for a 2-D image) or [oh, ow, C] (2-D kernel applied to each
  channel of an [H, W, C] image), oh = output_size(H, kh, sh, ph) and likewise ow.
  """
  image, kernel, depthwise, squeeze, stride, padding, out_hw = _prepare(
    image, kernel, stride, padding, "correlate2d"
  )
  # Compiled as one program: op-by-op dispatch of the kh*kw slices would be slow.
  out = _correlate(
    image, kernel, stride=stride, padding=padding, out_hw=out_hw, depthwise=depthwise
  )
  return out[:, :, 0] if squeeze else out


def convolve2d(image, kernel, *, stride=1, padding=0) -> jax.Array:
  """True convolution S(i, j) = sum_m sum_n I(m, n) K(i - m, j - n).

  It equals `correlate2d` with the kernel flipped in both spatial axes. The
  flip is what makes convolution commutative (I * K = K * I) and associative,
  which the proofs want; a learned kernel does not care, since learning would
  simply find the flipped weights, which is why conv layers correlate.

  Same shapes, stride and padding as `correlate2d`: image [H, W] or [H, W, C],
  kernel [kh, kw] or [kh, kw, C, F]; returns [oh, ow], [oh, ow, F] or [oh, ow, C].
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim not in (2, 4):
    raise ValueError(
      f"convolve2d: kernel must be [kh, kw] or [kh, kw, C, F], got shape {kernel.shape}"
    )
  return correlate2d(image, kernel[::-1, ::-1], stride=stride, padding=padding)


def correlate2d_lax(image, kernel, *, stride=1, padding=0) -> jax.Array:
  """`correlate2d` through `jax.lax.conv_general_dilated` (the path Flax layers take).

  Same arguments, shapes and numbers as `correlate2d`: image [H, W] or
  [H, W, C], kernel [kh, kw] or [kh, kw, C, F]; returns [oh, ow], [oh, ow, F]
  or [oh, ow, C].
  """
  image, kernel, depthwise, squeeze, (sh, sw), (ph, pw), _ = _prepare(
    image, kernel, stride, padding, "correlate2d_lax"
  )
  channels = image.shape[2]
  groups = 1
  if depthwise:
    # A per-channel filter is a grouped conv with one group per channel:
    # HWIO kernel with I = C / groups = 1 and O = C copies of the filter.
    kernel = jnp.broadcast_to(kernel[:, :, None, None], kernel.shape + (1, channels))
    groups = channels
  out = lax.conv_general_dilated(
    image[None],
    kernel,
    window_strides=(sh, sw),
    padding=((ph, ph), (pw, pw)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
    precision=lax.Precision.HIGHEST,
  )[0]
  return out[:, :, 0] if squeeze else out
