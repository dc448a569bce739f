"""RoI Align (Mask R-CNN): bilinear samples averaged per bin, exactly torchvision.ops.roi_align."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.conv import _as_int
from research.ops.roi.common import _chunked, _divide, _validate, check_rois

# Taps gathered per fused loop; more go through a fori_loop over groups of them.
_UNROLL = 16


def _tap_sum(table, flat, weight):
  """sum_k weight[..., k] * table[flat[..., k]]: table [M, C], flat and weight [..., K] -> [..., C].

  One gather per tap, summed as it is read: XLA fuses them into a single loop,
  about 3x faster on CPU than gathering [..., K, C] and then contracting K.
  """

  def group(acc, flat, weight):
    for j in range(flat.shape[-1]):
      acc = acc + weight[..., j, None] * table[flat[..., j]]
    return acc

  dtype = jnp.promote_types(table.dtype, weight.dtype)
  acc = jnp.zeros((*flat.shape[:-1], table.shape[-1]), dtype)
  taps = flat.shape[-1]
  if taps <= _UNROLL:
    return group(acc, flat, weight)
  groups = -(-taps // _UNROLL)
  pad = [(0, 0)] * (flat.ndim - 1) + [(0, groups * _UNROLL - taps)]
  flat, weight = jnp.pad(flat, pad), jnp.pad(weight, pad)  # weight 0: padding adds nothing

  def step(g, acc):
    start = g * _UNROLL
    return group(
      acc,
      lax.dynamic_slice_in_dim(flat, start, _UNROLL, axis=-1),
      lax.dynamic_slice_in_dim(weight, start, _UNROLL, axis=-1),
    )

  return lax.fori_loop(0, groups, step, acc)


def _bin_taps(size_hw, index, ys, wy, xs, wx):
  """One roi's taps: rows ys, wy [oh, Ty] and columns xs, wx [ow, Tx] -> flat, weight [oh, ow, K].

  flat indexes the features as rows of [N * H * W, C]; each bin's taps are the
  product of its row taps and its column taps, K = Ty * Tx.
  """
  h, w = size_hw
  oh, ow = ys.shape[0], xs.shape[0]
  flat = (index * h + ys[:, None, :, None]) * w + xs[None, :, None, :]
  weight = wy[:, None, :, None] * wx[None, :, None, :]
  return flat.reshape(oh, ow, -1), weight.reshape(oh, ow, -1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _gather_sum(size_hw, table, index, ys, wy, xs, wx):
  """Bilinear taps summed per bin: table [N * H * W, C], per-roi taps (see _bin_taps).

  index [R], ys, wy [R, oh, Ty], xs, wx [R, ow, Tx] -> [R, oh, ow, C], chunked
  over rois so that no [R, oh, ow, K] array is ever formed.
  """
  r, oh, ow = ys.shape[0], ys.shape[1], xs.shape[1]

  def body(args):
    return _tap_sum(table, *_bin_taps(size_hw, *args))

  return _chunked(body, (index, ys, wy, xs, wx), r, oh * ow * table.shape[1])


@_gather_sum.defjvp
def _gather_sum_jvp(size_hw, primals, tangents):
  # The tangent as one [oh, ow, K, C] gather and a contraction: its transpose,
  # the gradient, is then one scatter-add per chunk instead of K of them (2x
  # faster). The taps carry no tangent: they come from the rois, constants.
  table, index, ys, wy, xs, wx = primals
  d_table = tangents[0]
  r, oh, ow = ys.shape[0], ys.shape[1], xs.shape[1]
  taps = ys.shape[2] * xs.shape[2]

  def body(args):
    flat, weight = _bin_taps(size_hw, *args)
    return jnp.einsum("pqk,pqkc->pqc", weight, d_table[flat], precision=lax.Precision.HIGHEST)

  d_out = _chunked(body, (index, ys, wy, xs, wx), r, oh * ow * taps * table.shape[1])
  return _gather_sum(size_hw, table, index, ys, wy, xs, wx), d_out


# ----------------------------------------------------------------------------- roi_align


def _align_axis(lo, hi, out: int, size: int, ratio: int, bound: int, aligned: bool):
  """Taps of one axis: (rows [R, out, T] int32, weights [R, out, T]).

  lo, hi: [R] scaled roi ends. The weights include 1 / (samples of this axis):
  both axes' product is torchvision's 1 / count.
  """
  # torchvision's float expressions in torchvision's order, so that samples land
  # on the same side of the [-1, size] validity edges.
  offset = 0.5 if aligned else 0.0
  start, end = lo - offset, hi - offset
  length = end - start
  if not aligned:
    length = jnp.maximum(length, 1.0)  # malformed rois are forced to 1 pixel
  bin_size = _divide(length, out)
  dtype = lo.dtype
  p = jnp.arange(out, dtype=dtype)[None, :, None]
  if ratio > 0:
    grid = jnp.full(lo.shape, ratio, jnp.int32)
    slots = ratio
  else:
    grid = jnp.ceil(_divide(length, out)).astype(jnp.int32)  # <= 0: aligned, inverted rois
    slots = bound
  grid_f = jnp.maximum(grid, 1).astype(dtype)[:, None, None]
  k = jnp.arange(slots, dtype=dtype)[None, None, :]
  y = start[:, None, None] + p * bin_size[:, None, None]
  y = y + _divide((k + 0.5) * bin_size[:, None, None], grid_f)  # [R, out, slots]
  valid = (k < grid[:, None, None]) & (y >= -1.0) & (y <= size)
  y = jnp.clip(y, 0.0, size - 1)  # torchvision's border clamps
  scale = 1.0 / grid_f
  if ratio > 0:
    low = jnp.floor(y)
    frac = y - low
    high = jnp.minimum(low + 1, size - 1)
    rows = jnp.stack([low, high], -1).astype(jnp.int32)
    # where, not a product: a NaN box gives 0 as in torchvision, not NaN.
    weights = jnp.where(valid[..., None], jnp.stack([1.0 - frac, frac], -1) * scale[..., None], 0)
    shape = (lo.shape[0], out, 2 * slots)
    return rows.reshape(shape), weights.reshape(shape)
  # Adaptive samples of a bin are bin/ceil(bin) <= 1 pixel apart, so `slots` of
  # them touch at most slots + 1 consecutive rows (+1 for rounding): gather that
  # window once and sum each sample's tent weight max(0, 1 - |y - row|), which is
  # torchvision's (1 - ly, ly) pair, into it.
  first = jnp.floor(y[..., :1])  # [R, out, 1]
  rows = first + jnp.arange(slots + 2, dtype=dtype)  # [R, out, slots + 2]
  tent = jnp.maximum(0.0, 1.0 - jnp.abs(y[..., :, None] - rows[..., None, :]))
  weights = jnp.where(valid[..., None], tent, 0).sum(-2) * scale
  return jnp.minimum(rows, size - 1).astype(jnp.int32), weights


@functools.partial(
  jax.jit, static_argnames=("out_hw", "spatial_scale", "sampling_ratio", "bounds", "aligned")
)
def _roi_align(features, rois, *, out_hw, spatial_scale, sampling_ratio, bounds, aligned):
  n, h, w, c = features.shape
  (oh, ow), (sh, sw) = out_hw, bounds
  rois = lax.stop_gradient(rois)
  index = jnp.clip(rois[:, 0].astype(jnp.int32), 0, n - 1)
  box = rois[:, 1:] * jnp.asarray(spatial_scale, rois.dtype)
  ys, wy = _align_axis(box[:, 1], box[:, 3], oh, h, sampling_ratio, sh, aligned)
  xs, wx = _align_axis(box[:, 0], box[:, 2], ow, w, sampling_ratio, sw, aligned)
  out = _gather_sum((h, w), features.reshape(n * h * w, c), index, ys, wy, xs, wx)
  return out.astype(features.dtype)


def _check_samples(values, out_hw, spatial_scale, bounds, aligned):
  """Host-side: each roi's adaptive sample count per axis fits in the static bound."""
  box = values[:, 1:].astype(np.float32) * np.float32(spatial_scale) - np.float32(
    0.5 if aligned else 0.0
  )
  length = box[:, 2:] - box[:, :2]  # (width, height)
  if not aligned:
    length = np.maximum(length, 1.0)
  need = np.ceil(length / np.float32([out_hw[1], out_hw[0]]))[:, ::-1]  # (rows, cols)
  over = np.flatnonzero((need > np.array(bounds)).any(1))
  if over.size:
    i = int(over[0])
    raise ValueError(
      f"roi_align: sampling_ratio <= 0 takes ceil(roi_size / output_size) samples per bin "
      f"and axis, at most max_samples = {bounds} (rows, cols) under static shapes; roi {i} "
      f"{values[i].tolist()} needs {tuple(int(v) for v in need[i])} ({over.size} rois "
      f"exceed): pass max_samples>={int(need[over].max())}"
    )


def roi_align(
  features,
  rois,
  output_size,
  *,
  spatial_scale: float = 1.0,
  sampling_ratio: int = -1,
  aligned: bool = False,
  max_samples: int | None = None,
) -> jax.Array:
  """Mask R-CNN's RoI Align: average of bilinear samples per bin (torchvision's numbers).

  features: [N, H, W, C]; rois: [R, 5] (batch index, x1, y1, x2, y2) in image
  coordinates, scaled by spatial_scale onto the map; output_size: int or
  (oh, ow). sampling_ratio > 0 samples a fixed grid per bin; <= 0 takes
  ceil(roi_size / output_size) per axis, at most max_samples (static; default
  ceil(H / oh) and ceil(W / ow), which covers rois inside the map). aligned
  shifts by half a pixel so that pixel centres sit at +0.5 (Detectron2).
  Returns [R, oh, ow, C].
  """
  fn = "roi_align"
  features, rois, out_hw, scale = _validate(features, rois, output_size, spatial_scale, fn)
  ratio = _as_int(sampling_ratio, "sampling_ratio", fn)
  n, h, w, c = features.shape
  if max_samples is None:
    bounds = (-(-h // out_hw[0]), -(-w // out_hw[1]))
  else:
    bound = _as_int(max_samples, "max_samples", fn)
    if bound < 1:
      raise ValueError(f"{fn}: max_samples must be >= 1, got {max_samples!r}")
    bounds = (bound, bound)
  values = check_rois(rois, n, fn=fn)
  if ratio > 0:
    bounds = (0, 0)  # unused: one compiled program per sampling ratio
  elif values is not None:
    _check_samples(values, out_hw, scale, bounds, aligned)
  if rois.shape[0] == 0:
    return jnp.zeros((0, *out_hw, c), features.dtype)
  return _roi_align(
    features,
    rois,
    out_hw=out_hw,
    spatial_scale=scale,
    sampling_ratio=max(ratio, 0),
    bounds=bounds,
    aligned=bool(aligned),
  )


# ------------------------------------------------------------------------------ roi_pool
