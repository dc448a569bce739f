"""RoI pooling (Fast R-CNN) and RoI Align (Mask R-CNN) on NHWC feature maps.

Both turn every region of interest, a box in image coordinates, into a fixed
[oh, ow, C] grid of features, the input of a detector's box or mask head.

    features [N, H, W, C], rois [R, 5] = (batch index, x1, y1, x2, y2) -> [R, oh, ow, C]

The numbers are exactly torchvision.ops.roi_pool / roi_align (tests hold them
and their gradients to 1e-4): `roi_pool` rounds the scaled box to pixels,
splits it into oh x ow bins with floor/ceil and takes each bin's max;
`roi_align` does not round, it averages bilinear samples, sampling_ratio per
bin and axis, or ceil(roi_size / output_size) of them when sampling_ratio <= 0.
As in torchvision the gradient flows to the features only; rois are treated as
constants (jax.lax.stop_gradient).

Static shapes. Under jit the work cannot depend on the values of the rois:

- roi_align gathers a fixed number of taps per bin and axis: 2 * sampling_ratio
  (two neighbours per sample) or, when sampling_ratio <= 0, a window of
  max_samples + 2 consecutive rows into which the tent weights of up to
  max_samples samples are summed (adaptive samples are at most one pixel
  apart). Slots past a roi's own sample count are masked. max_samples
  defaults to ceil(H / oh) (and ceil(W / ow)): enough for every roi inside the
  feature map.
- roi_pool takes each bin's max as 4 lookups in a 2-D sparse table, the max of
  every 2**a x 2**b window, a < L_h, b < L_w: two overlapping windows cover any
  run of up to 2**L pixels. L = ceil(log2(max_bin_size)), max_bin_size by
  default ceil((H + 1) / oh) + 1 (likewise for W): enough for every roi inside
  the map. The table holds L_h * L_w copies of the features.

A roi that needs more than the bound raises a ValueError (which roi, what to
pass) when the rois are concrete; under jit it cannot be checked, and the
samples or pixels past the bound are left out.

Speed on CPU (benchmarks/roi.py; 4 to 10x torchvision for roi_align, about 1x
to 3x for roi_pool). Each tap is its own gather, summed as it is read, so XLA
fuses them into one loop instead of materialising [R, oh, ow, taps, C]; rois
go in chunks (jax.lax.map) so that the gradient's scatter-adds stay in cache.
roi_pool's gradient goes, as torchvision's, to each bin's first maximum: only
under differentiation is a second table, of those positions, built.
roi_align supports forward and reverse mode, roi_pool reverse mode (jax.grad).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.conv import _as_int, _pair

__all__ = ["roi_align", "roi_pool", "check_rois"]

# Output elements per chunk of rois: about 1 MB of float32, a CPU cache's worth.
_CHUNK_ELEMENTS = 1 << 18
# Taps gathered per fused loop; more go through a fori_loop over groups of them.
_UNROLL = 16


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_rois(rois, num_images: int, *, fn: str = "check_rois") -> np.ndarray | None:
  """Host-side check that every roi's batch index names one of num_images images.

  rois: [R, 5] (batch index, x1, y1, x2, y2). Returns the rois as a numpy array,
  or None when they are traced (under jit nothing can be checked; an index out
  of range then reads the nearest image).
  """
  if not _is_concrete(rois):
    return None
  values = np.asarray(rois)
  index = values[:, 0]
  bad = np.flatnonzero((index < 0) | (index >= num_images) | (index != np.floor(index)))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f"{fn}: rois[:, 0] must be integer batch indices in [0, {num_images}) for features "
      f"of N={num_images} images, got {float(index[i])} at roi {i} ({bad.size} bad rois)"
    )
  return values


def _validate(features, rois, output_size, spatial_scale, fn: str):
  features, rois = jnp.asarray(features), jnp.asarray(rois)
  if features.ndim != 4:
    raise ValueError(f"{fn}: features must be [N, H, W, C] (NHWC), got shape {features.shape}")
  if rois.ndim != 2 or rois.shape[1] != 5:
    raise ValueError(
      f"{fn}: rois must be [R, 5] (batch index, x1, y1, x2, y2), got shape {rois.shape}"
    )
  if min(features.shape[1:3]) < 1:
    raise ValueError(f"{fn}: features must have H, W >= 1, got shape {features.shape}")
  out_hw = _pair(output_size, "output_size", fn)
  if min(out_hw) < 1:
    raise ValueError(f"{fn}: output_size must be >= 1, got {output_size!r}")
  try:
    scale = float(spatial_scale)
  except TypeError:
    scale = math.nan
  if not (math.isfinite(scale) and scale > 0):
    raise ValueError(f"{fn}: spatial_scale must be a positive float, got {spatial_scale!r}")
  if not jnp.issubdtype(features.dtype, jnp.inexact):
    features = features.astype(jnp.float32)
  # Box arithmetic in at least float32, as torchvision's kernels in the input's type.
  coord = jnp.promote_types(features.dtype, jnp.float32)
  return features, rois.astype(coord), out_hw, scale


def _divide(numerator, denominator):
  """numerator / denominator rounded as IEEE division, like torchvision's C++.

  XLA rewrites x / broadcast(d) as x * broadcast(1 / d), which rounds
  differently (6 / 7 != 6 * (1 / 7) in float32) and moves samples across
  torchvision's validity edges; behind a barrier the divisor is no broadcast.
  """
  denominator = jnp.broadcast_to(denominator, numerator.shape).astype(numerator.dtype)
  return numerator / lax.optimization_barrier(denominator)


def _chunked(body, xs, num_rois: int, elements_per_roi: int):
  """lax.map of body over rois, in chunks whose outputs stay in cache.

  Small chunks matter most for the gradient: the transposed gathers
  scatter-add chunk by chunk into one small gradient buffer.
  """
  batch = max(1, min(num_rois, _CHUNK_ELEMENTS // max(1, elements_per_roi)))
  return lax.map(body, xs, batch_size=batch)


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


def _round_half_away(x):
  """C's round(): halves away from zero (jnp.round goes to even)."""
  whole = jnp.trunc(x)
  return whole + jnp.where(jnp.abs(x - whole) >= 0.5, jnp.sign(x), 0.0)


def _pool_axis(lo, hi, out: int, size: int):
  """Bins of one axis as torchvision cuts them: (start, end) [R, out] int32, clipped."""
  start = _round_half_away(lo).astype(jnp.int32)
  length = jnp.maximum(_round_half_away(hi).astype(jnp.int32) - start + 1, 1)
  bin_size = _divide(length.astype(lo.dtype), out)
  p = jnp.arange(out, dtype=lo.dtype)
  first = jnp.floor(p * bin_size[:, None]).astype(jnp.int32) + start[:, None]
  last = jnp.ceil((p + 1) * bin_size[:, None]).astype(jnp.int32) + start[:, None]
  return jnp.clip(first, 0, size), jnp.clip(last, 0, size)


def _window_max(features, levels: tuple[int, int], with_first: bool):
  """Max of every 2**a x 2**b window (a < La, b < Lb) and, optionally, where it first is.

  features: [N, H, W, C]. Returns values [La, Lb, N, H, W, C] (the window at
  (h, w) covers rows h.. and columns w..) and, with_first, positions h * W + w
  of each window's first maximum in row-major order (torchvision's scan),
  int16 when H * W allows, else int32; or None.
  """
  la, lb = levels
  n, h, w, c = features.shape

  def combine(values, first, step: int, axis: int):
    """Each window with its neighbour `step` further along axis: windows twice as long."""
    size, step = values.shape[axis], min(step, values.shape[axis])
    pad = [(0, 0)] * values.ndim
    pad[axis] = (0, step)
    # Past the map: -inf, which never wins a window that holds a pixel.
    far = jnp.pad(lax.slice_in_dim(values, step, size, axis=axis), pad, constant_values=-jnp.inf)
    # Ties keep the near window: columns are joined within single rows and rows
    # joined last, so the near window's pixels all come first in row-major
    # order, and a strict > keeps torchvision's first maximum.
    take = far > values
    # Barriers materialise each level: fused into the next one, every level
    # would be recomputed by all the levels above it.
    values = lax.optimization_barrier(jnp.where(take, far, values))
    if first is None:
      return values, None
    far_first = jnp.pad(lax.slice_in_dim(first, step, size, axis=axis), pad)
    return values, lax.optimization_barrier(jnp.where(take, far_first, first))

  first = None
  if with_first:
    # int16 where positions fit: half the memory traffic, twice as fast.
    dtype = jnp.int16 if h * w <= np.iinfo(np.int16).max else jnp.int32
    first = jnp.broadcast_to(jnp.arange(h * w, dtype=dtype).reshape(1, h, w, 1), (n, h, w, c))
  row = [(features, first)]
  for b in range(1, lb):
    row.append(combine(*row[-1], 2 ** (b - 1), axis=2))
  # All column sizes at once, then every row size of them: La + Lb - 2 passes.
  level = (jnp.stack([v for v, _ in row]), jnp.stack([f for _, f in row]) if with_first else None)
  table = [level]
  for a in range(1, la):
    table.append(combine(*table[-1], 2 ** (a - 1), axis=2))
  values = jnp.stack([v for v, _ in table])
  return values, (jnp.stack([f for _, f in table]) if with_first else None)


def _level(length, levels: int):
  """floor(log2(length)) for length >= 1, capped at levels - 1, in exact integer steps."""
  powers = 2 ** jnp.arange(1, levels, dtype=jnp.int32)
  return (length[..., None] >= powers).sum(-1).astype(jnp.int32)


def _pool_lookup(features, bins, levels, with_first: bool):
  """Each bin's max and, with_first, its first position h * W + w (-1 when empty).

  bins: (index [R], h0, h1 [R, oh], w0, w1 [R, ow]) clipped to the map.
  Returns [R, oh, ow, C] values (0 for empty bins) and positions (int16 when
  H * W allows, else int32) or None.
  """
  n, h, w, c = features.shape
  la, lb = levels
  values, first = _window_max(features, levels, with_first)
  values = values.reshape(-1, c)
  first = first.reshape(-1, c) if with_first else None

  def lookup(table, flat):
    # Empty bins may point past the map: clip keeps the read in bounds, and
    # their result is replaced below.
    return jnp.take(table, flat, axis=0, mode="clip")

  def one_roi(i, h0, h1, w0, w1):  # [oh] and [ow] bins
    a, b = _level(jnp.maximum(h1 - h0, 1), la), _level(jnp.maximum(w1 - w0, 1), lb)
    # Two overlapping 2**a windows cover any run of up to 2**(a + 1) rows.
    rows = jnp.stack([h0, jnp.maximum(h1 - 2**a, h0)], -1)[:, None, :, None]  # [oh, 1, 2, 1]
    cols = jnp.stack([w0, jnp.maximum(w1 - 2**b, w0)], -1)[None, :, None, :]  # [1, ow, 1, 2]
    level = (a[:, None] * lb + b[None, :])[:, :, None, None]
    flat = (((level * n + i) * h + rows) * w + cols).reshape(*level.shape[:2], 4)
    # Four separate gathers fuse with the max into one loop (see _tap_sum).
    v = [lookup(values, flat[..., j]) for j in range(4)]  # [oh, ow, C]
    best = jnp.maximum(jnp.maximum(v[0], v[1]), jnp.maximum(v[2], v[3]))
    empty = ((h1 <= h0)[:, None] | (w1 <= w0)[None, :])[..., None]
    if not with_first:
      return jnp.where(empty, 0, best), None
    # The first maximum is the first among the windows' first maxima that equal
    # it. (Independent terms, not a chain of selects, which XLA would duplicate.)
    p = [
      jnp.where(v[j] == best, lookup(first, flat[..., j]).astype(jnp.int32), h * w)
      for j in range(4)
    ]
    best_p = jnp.minimum(jnp.minimum(p[0], p[1]), jnp.minimum(p[2], p[3]))
    return jnp.where(empty, 0, best), jnp.where(empty, -1, best_p).astype(first.dtype)

  # All rois at once: chunking them (lax.map) would carry the table into a
  # loop, a copy that costs more than the chunks save.
  out, first = jax.vmap(one_roi)(*bins)
  return out.astype(features.dtype), first


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pool(features, bins, levels):
  """Bins' maxima [R, oh, ow, C]; the gradient goes to each bin's first maximum."""
  return _pool_lookup(features, bins, levels, with_first=False)[0]


def _pool_fwd(features, bins, levels):
  # Only under differentiation are the first maxima located (a second table).
  out, first = _pool_lookup(features, bins, levels, with_first=True)
  return out, (first, bins[0], features)


def _pool_bwd(levels, residuals, cotangent):
  # torchvision's backward: each bin's cotangent added to its first maximum.
  first, index, features = residuals  # first: [R, oh, ow, C] positions h * W + w, int16/32
  n, h, w, c = features.shape
  r = first.shape[0]
  batch = max(1, min(r, _CHUNK_ELEMENTS // math.prod(first.shape[1:])))

  # Chunk by chunk into one small buffer; the loop also keeps XLA from fusing
  # the lookups that made `first` into the scatter's indices, once per scalar.
  def add(k, grad):
    # The last chunk is moved back to fit; rois it shares with the one before are masked.
    start = jnp.minimum(k * batch, r - batch)
    chunk = [lax.dynamic_slice_in_dim(x, start, batch) for x in (first, index, cotangent)]
    first_k, index_k, g = chunk
    new = (start + jnp.arange(batch) >= k * batch)[:, None, None, None] & (first_k >= 0)
    # Flat scalar indices: XLA scatters them faster than (row, channel) pairs.
    flat = (index_k[:, None, None, None] * (h * w) + first_k.astype(jnp.int32)) * c
    flat = flat + jnp.arange(c)
    flat = jnp.where(new, flat, n * h * w * c)  # empty bins and repeats: dropped
    return grad.at[flat.reshape(-1)].add(g.reshape(-1), mode="drop")

  grad = lax.fori_loop(0, -(-r // batch), add, jnp.zeros(n * h * w * c, cotangent.dtype))
  return grad.reshape(features.shape).astype(features.dtype), (None,) * 5  # no roi gradient


_pool.defvjp(_pool_fwd, _pool_bwd)


@functools.partial(jax.jit, static_argnames=("out_hw", "spatial_scale", "levels"))
def _roi_pool(features, rois, *, out_hw, spatial_scale, levels):
  n, h, w, _ = features.shape
  (oh, ow) = out_hw
  rois = lax.stop_gradient(rois)
  index = jnp.clip(rois[:, 0].astype(jnp.int32), 0, n - 1)
  box = rois[:, 1:] * jnp.asarray(spatial_scale, rois.dtype)
  h0, h1 = _pool_axis(box[:, 1], box[:, 3], oh, h)  # [R, oh]
  w0, w1 = _pool_axis(box[:, 0], box[:, 2], ow, w)  # [R, ow]
  return _pool(features, (index, h0, h1, w0, w1), levels)


def _check_bins(values, out_hw, spatial_scale, size_hw, levels):
  """Host-side: each roi's bins are no longer than the sparse table covers."""
  box = values[:, 1:].astype(np.float32) * np.float32(spatial_scale)
  whole = np.trunc(box)  # C's round(), as _round_half_away
  rounded = (whole + np.where(np.abs(box - whole) >= 0.5, np.sign(box), 0)).astype(np.int64)
  longest = []
  for axis, (out, size) in enumerate(zip(out_hw, size_hw)):
    lo, hi = rounded[:, 1 - axis], rounded[:, 3 - axis]  # y for axis 0, x for axis 1
    bin_size = np.maximum(hi - lo + 1, 1).astype(np.float32) / np.float32(out)
    p = np.arange(out, dtype=np.float32)
    first = np.clip(np.floor(p * bin_size[:, None]).astype(np.int64) + lo[:, None], 0, size)
    last = np.clip(np.ceil((p + 1) * bin_size[:, None]).astype(np.int64) + lo[:, None], 0, size)
    longest.append((last - first).max(1))
  need, cover = np.stack(longest, 1), 2 ** np.array(levels)  # (rows, cols)
  over = np.flatnonzero((need > cover).any(1))
  if over.size:
    i = int(over[0])
    raise ValueError(
      f"roi_pool: under static shapes bins are at most {tuple(cover.tolist())} pixels "
      f"(rows, cols) for this max_bin_size; roi {i} {values[i].tolist()} has a bin of "
      f"{tuple(need[i].tolist())} ({over.size} rois exceed): pass "
      f"max_bin_size>={int(need[over].max())}"
    )


def roi_pool(
  features, rois, output_size, *, spatial_scale: float = 1.0, max_bin_size: int | None = None
) -> jax.Array:
  """Fast R-CNN's RoI max pooling with torchvision's rounding (torchvision's numbers).

  features: [N, H, W, C]; rois: [R, 5] (batch index, x1, y1, x2, y2) in image
  coordinates, scaled by spatial_scale and rounded to map pixels; output_size:
  int or (oh, ow). Each bin's max, 0 for empty bins; the gradient goes to the
  first maximum in row-major order. max_bin_size: static bound on a bin's
  side in pixels (default ceil((H + 1) / oh) + 1, which covers rois inside the
  map). Returns [R, oh, ow, C]. Differentiable in reverse mode (jax.grad), as
  torchvision's autograd; jax.jvp is not defined for it.
  """
  fn = "roi_pool"
  features, rois, out_hw, scale = _validate(features, rois, output_size, spatial_scale, fn)
  n, h, w, c = features.shape
  if max_bin_size is None:
    bounds = (-(-(h + 1) // out_hw[0]) + 1, -(-(w + 1) // out_hw[1]) + 1)
  else:
    bound = _as_int(max_bin_size, "max_bin_size", fn)
    if bound < 1:
      raise ValueError(f"{fn}: max_bin_size must be >= 1, got {max_bin_size!r}")
    bounds = (bound, bound)
  # Levels 0..L-1 cover runs of up to 2**L pixels; bins never exceed the map.
  levels = tuple(max(1, math.ceil(math.log2(min(b, s)))) for b, s in zip(bounds, (h, w)))
  values = check_rois(rois, n, fn=fn)
  if values is not None:
    _check_bins(values, out_hw, scale, (h, w), levels)
  if rois.shape[0] == 0:
    return jnp.zeros((0, *out_hw, c), features.dtype)
  return _roi_pool(features, rois, out_hw=out_hw, spatial_scale=scale, levels=levels)
