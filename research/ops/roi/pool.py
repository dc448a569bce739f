"""RoI pooling (Fast R-CNN): quantized bins, max per bin, exactly torchvision.ops.roi_pool."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.conv import _as_int
from research.ops.roi.common import _CHUNK_ELEMENTS, _divide, _validate, check_rois


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


def roi_pool_levels(maps, rois, level, output_size, *, spatial_scales) -> jax.Array:
  """`roi_pool` of each roi from its own map, at one map's cost.

  maps: [N, H_l, W_l, C] for each level l; rois: [R, 5] (batch index, x1, y1, x2, y2) in
  image coordinates; level: [R] int, the map of each roi; spatial_scales: one per map.
  Equal, with its gradient, to roi_pool(maps[level[r]], rois[r:r+1], output_size,
  spatial_scale=spatial_scales[level[r]]) for every r. The maps are stacked along the
  height into one (each at its own row offset, padded to the widest): a roi's bins, cut in
  its own map's pixels and shifted by its offset, never leave its map, so one sparse table
  and one lookup per bin serve every level (pooling each roi from every map and keeping its
  own is L times the work). Returns [R, oh, ow, C]. Rois are taken to lie inside their
  maps, as a detector's clipped boxes do: the table covers bins up to roi_pool's default
  max_bin_size of each map, and unlike roi_pool on concrete rois this is not checked.
  """
  fn = "roi_pool_levels"
  maps = [jnp.asarray(m) for m in maps]
  if not maps or len(spatial_scales) != len(maps):
    raise ValueError(
      f"{fn}: one spatial scale per map; received {len(maps)} maps and "
      f"{len(spatial_scales)} scales."
    )
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  rois = lax.stop_gradient(jnp.asarray(rois))
  n = maps[0].shape[0]
  width = max(m.shape[2] for m in maps)
  tall = jnp.concatenate(
    [jnp.pad(m, ((0, 0), (0, 0), (0, width - m.shape[2]), (0, 0))) for m in maps], axis=1
  )
  index = jnp.clip(rois[:, 0].astype(jnp.int32), 0, n - 1)
  bins, offset = [], 0
  for m, scale in zip(maps, spatial_scales, strict=True):
    h, w = m.shape[1:3]
    box = rois[:, 1:] * jnp.asarray(scale, rois.dtype)
    h0, h1 = _pool_axis(box[:, 1], box[:, 3], oh, h)
    w0, w1 = _pool_axis(box[:, 0], box[:, 2], ow, w)
    bins.append((h0 + offset, h1 + offset, w0, w1))
    offset += h
  level = jnp.clip(jnp.asarray(level, jnp.int32), 0, len(maps) - 1)
  chosen = [jnp.stack([b[i] for b in bins])[level, jnp.arange(rois.shape[0])] for i in range(4)]
  # The sparse table covers the longest bin of any map (each map's roi_pool default).
  levels = tuple(
    max(
      max(1, math.ceil(math.log2(min(-(-(m.shape[axis] + 1) // out) + 1, m.shape[axis]))))
      for m in maps
    )
    for axis, out in ((1, oh), (2, ow))
  )
  return _pool(tall, (index, *chosen), levels)
