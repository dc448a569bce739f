"""2-D convolutions through oneDNN's primitives (XLA FFI custom calls), differentiable.

`conv2d` is `lax.conv_general_dilated` for NHWC float32 images and HWIO float32
kernels. Its forward pass, input gradient and kernel gradient are three custom
calls, each the transpose of the others, so every order of reverse-mode
differentiation (`grad`, `grad` of `grad`) stays on oneDNN; `vmap` maps them
(unmapped kernels fold the mapped axis into the batch), `jit` and `pmap` compile
them. Forward mode (`jvp`) is not defined, as for any `jax.custom_vjp`. CPU only:
callers choose it with `lax.platform_dependent` (research.models.layers does).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.onednn import library


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A convolution's static description. padding: ((top, bottom), (left, right)) with
  bottom/right the exact amounts that give the output size, as oneDNN requires."""

  in_hw: tuple[int, int]
  kernel_hw: tuple[int, int]
  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  groups: int

  @property
  def out_hw(self) -> tuple[int, int]:
    return tuple(
      (n + lo + hi - (k - 1) * d - 1) // s + 1
      for n, k, s, (lo, hi), d in zip(
        self.in_hw, self.kernel_hw, self.strides, self.padding, self.dilation, strict=True
      )
    )

  def attributes(self) -> dict:
    (t, b), (left, r) = self.padding
    return dict(
      strides=np.asarray(self.strides, np.int64),
      padding=np.asarray([t, b, left, r], np.int64),
      dilation=np.asarray(self.dilation, np.int64),
      groups=np.int64(self.groups),
    )


def plan(x_shape, w_shape, strides, padding, dilation=(1, 1), groups=1) -> Geometry | str:
  """The Geometry of a convolution of x [N, H, W, C] with w [kh, kw, C / groups, F], or a
  string saying why oneDNN does not take it.

  padding: ((top, bottom), (left, right)) as lax takes it. Padding beyond what the
  output needs is dropped (those rows are never read); input rows and columns that no
  output reads (a 1x1 stride-2 kernel on an even size) are cut: `in_hw` is the part of
  x that the convolution takes, x[:, :in_hw[0], :in_hw[1]].
  """
  if len(x_shape) != 4 or len(w_shape) != 4:
    return f"not a 2-D NHWC convolution: x {tuple(x_shape)}, w {tuple(w_shape)}"
  (kh, kw, ci, co), c = w_shape, x_shape[3]
  if ci * groups != c or co % groups:
    return f"channels {c} -> {co} do not split into {groups} groups of kernel {tuple(w_shape)}"
  if any(p < 0 for pair in padding for p in pair):
    return f"negative padding {padding}"
  exact, sizes = [], []
  for n, k, s, (lo, hi), d in zip(x_shape[1:3], (kh, kw), strides, padding, dilation, strict=True):
    out = (n + lo + hi - (k - 1) * d - 1) // s + 1
    if out < 1:
      return f"empty output ({n} pixels, kernel {k}, padding {(lo, hi)})"
    right = (out - 1) * s + (k - 1) * d + 1 - n - lo
    if max(lo, right) > (k - 1) * d:
      # Output pixels that read padding only: oneDNN 3.2's backward-data pass kills the
      # process on them (3x3 kernels padded by 3 or more, e.g. FCN's pad 100).
      return f"padding {(lo, hi)} beyond the kernel's reach {(k - 1) * d}"
    exact.append((lo, max(right, 0)))
    sizes.append(n + min(right, 0))
  return Geometry(tuple(sizes), (kh, kw), tuple(strides), tuple(exact), tuple(dilation), groups)


def _call(name, shapes, *args, geometry):
  available, why = library.status()
  if not available:
    raise RuntimeError(f"research.ops.onednn: the extension is not available here: {why}")
  return jax.ffi.ffi_call(name, shapes, vmap_method="expand_dims")(*args, **geometry.attributes())


def _forward(x, w, b, geometry):
  shape = jax.ShapeDtypeStruct((x.shape[0], *geometry.out_hw, w.shape[3]), jnp.float32)
  if b is None:
    return _call("research_onednn_conv_forward", shape, x, w, geometry=geometry)
  return _call("research_onednn_conv_forward_bias", shape, x, w, b, geometry=geometry)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, geometry: Geometry):
  """y [N, oh, ow, F] of x [N, H, W, C] and w [kh, kw, C / groups, F]."""
  return _forward(x, w, None, geometry)


def _conv_fwd(x, w, geometry):
  return conv(x, w, geometry), (x, w)


def _conv_bwd(geometry, residuals, dy):
  x, w = residuals
  return backward_data(dy, w, geometry), backward_weights(x, dy, geometry)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def backward_data(dy, w, geometry: Geometry):
  """dx [N, H, W, C] of dy [N, oh, ow, F] through w (the transpose of `conv` in x)."""
  if geometry.kernel_hw == (1, 1) and geometry.strides != (1, 1):
    # A strided 1x1 kernel reads every s-th pixel only (`plan` cut the rest and allows no
    # padding): its input gradient is the stride-1 one on that grid, spread out with zeros.
    # oneDNN 3.2's own strided backward-data ran at a third of that speed on AVX2 (ResNet-50's
    # 1x1 stride-2 projections at batch 16: 95-152 ms against 30-40 ms in torch).
    sh, sw = geometry.strides
    dense = dataclasses.replace(geometry, in_hw=geometry.out_hw, strides=(1, 1))
    dx = _backward_data(dy, w, dense)
    return lax.pad(
      dx, jnp.zeros((), dx.dtype), ((0, 0, 0), (0, 0, sh - 1), (0, 0, sw - 1), (0, 0, 0))
    )
  return _backward_data(dy, w, geometry)


def _backward_data(dy, w, geometry: Geometry):
  shape = jax.ShapeDtypeStruct(
    (dy.shape[0], *geometry.in_hw, w.shape[2] * geometry.groups), jnp.float32
  )
  return _call("research_onednn_conv_backward_data", shape, dy, w, geometry=geometry)


def _data_fwd(dy, w, geometry):
  return backward_data(dy, w, geometry), (dy, w)


def _data_bwd(geometry, residuals, g):
  dy, w = residuals
  return conv(g, w, geometry), backward_weights(g, dy, geometry)


backward_data.defvjp(_data_fwd, _data_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def backward_weights(x, dy, geometry: Geometry):
  """dw [kh, kw, C / groups, F] of x [N, H, W, C] and dy [N, oh, ow, F]."""
  shape = jax.ShapeDtypeStruct(
    (*geometry.kernel_hw, x.shape[3] // geometry.groups, dy.shape[3]), jnp.float32
  )
  return _call("research_onednn_conv_backward_weights", shape, x, dy, geometry=geometry)


def _weights_fwd(x, dy, geometry):
  return backward_weights(x, dy, geometry), (x, dy)


def _weights_bwd(geometry, residuals, g):
  x, dy = residuals
  return backward_data(dy, g, geometry), conv(x, g, geometry)


backward_weights.defvjp(_weights_fwd, _weights_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_bias(x, w, b, geometry: Geometry):
  """`conv(x, w) + b` with the bias b [F] added by oneDNN, and its gradient from oneDNN."""
  return _forward(x, w, b, geometry)


def _bias_fwd(x, w, b, geometry):
  return conv_bias(x, w, b, geometry), (x, w)


def _bias_bwd(geometry, residuals, dy):
  x, w = residuals
  return backward_data(dy, w, geometry), *backward_weights_bias(x, dy, geometry)


conv_bias.defvjp(_bias_fwd, _bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def backward_weights_bias(x, dy, geometry: Geometry):
  """(dw [kh, kw, C / groups, F], db [F]) of x and dy in one oneDNN call."""
  shapes = (
    jax.ShapeDtypeStruct(
      (*geometry.kernel_hw, x.shape[3] // geometry.groups, dy.shape[3]), jnp.float32
    ),
    jax.ShapeDtypeStruct((dy.shape[3],), jnp.float32),
  )
  return tuple(
    _call("research_onednn_conv_backward_weights_bias", shapes, x, dy, geometry=geometry)
  )


def _weights_bias_fwd(x, dy, geometry):
  return backward_weights_bias(x, dy, geometry), (x, dy)


def _weights_bias_bwd(geometry, residuals, g):
  x, dy = residuals
  gw, gb = g
  return backward_data(dy, gw, geometry), conv(x, gw, geometry) + gb


backward_weights_bias.defvjp(_weights_bias_fwd, _weights_bias_bwd)


def conv2d(x, w, b=None, *, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
  """oneDNN convolution: x [N, H, W, C] float32, w [kh, kw, C / groups, F] float32,
  optional b [F] -> [N, oh, ow, F], as `lax.conv_general_dilated(x, w, strides, padding,
  rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
  feature_group_count=groups) + b`. ValueError for what `plan` does not take."""
  geometry = plan(
    x.shape, w.shape, tuple(strides), tuple(map(tuple, padding)), tuple(dilation), groups
  )
  if isinstance(geometry, str):
    raise ValueError(f"conv2d: {geometry}.")
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise ValueError(f"conv2d: expected float32 x and w; received {x.dtype} and {w.dtype}.")
  x = x[:, : geometry.in_hw[0], : geometry.in_hw[1]]
  if b is None:
    return conv(x, w, geometry)
  if b.shape != (w.shape[3],):
    raise ValueError(f"conv2d: b: expected shape {(w.shape[3],)}; received {b.shape}.")
  return conv_bias(x, w, b.astype(jnp.float32), geometry)
