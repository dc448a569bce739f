"""Greedy non-maximum suppression with static shapes: `nms` and `batched_nms`, exactly
torchvision.ops' choices, padded to `max_output` with a validity mask."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.boxes.core import _area, _boxes, _is_concrete, _threshold


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# Boxes resolved at a time, and kept boxes each [TILE, TILE] IoU block compares
# them with: the blocks stay in cache, and temporaries stay O(N) (1 MB for 10,000
# boxes; the dense IoU matrix would be 400 MB). Tiles of 64 to 512 timed alike
# within noise on 2 CPU cores (benchmarks/boxes.py cases).
TILE = 256


def _overlaps(a, a_cls, b, b_cls, thr, by_class):
  """a: [5, A], b: [5, B] rows (x1, y1, x2, y2, area) -> [A, B] bool, IoU > thr."""
  w = jnp.minimum(a[2][:, None], b[2]) - jnp.maximum(a[0][:, None], b[0])
  h = jnp.minimum(a[3][:, None], b[3]) - jnp.maximum(a[1][:, None], b[1])
  inter = jnp.maximum(w, 0) * jnp.maximum(h, 0)
  # torchvision's expression term for term (kept box first), so IoUs round the same.
  over = inter / (a[4][:, None] + b[4] - inter) > thr
  return over & (a_cls[:, None] == b_cls) if by_class else over


def _greedy(cols, cls, alive, thr, *, cap, stop_at, tile, by_class):
  """Greedy NMS of boxes in processing order, one tile at a time.

  cols: [5, Np] (x1, y1, x2, y2, area), cls: [Np] int32 (non-decreasing when
  by_class), alive: [Np] bool; Np a multiple of tile. Returns (kept positions
  [cap] in processing order, count).
  """
  n = cols.shape[1]

  def body(state):
    t, k, kept, kept_cls, kept_pos, tb, tc = state
    ta = lax.dynamic_slice_in_dim(alive, t * tile, tile)
    # Only kept boxes can suppress. By class they are sorted by class, so the
    # ones of this tile's classes start at the first of class >= its first.
    first = jnp.searchsorted(kept_cls, tc[0]) // tile if by_class else 0

    def against_kept(c, a):
      kb = lax.dynamic_slice_in_dim(kept, c * tile, tile, axis=1)
      kc = lax.dynamic_slice_in_dim(kept_cls, c * tile, tile)
      return a & ~_overlaps(kb, kc, tb, tc, thr, by_class).any(axis=0)

    ta = lax.fori_loop(first, (k + tile - 1) // tile, against_kept, ta)
    # Within the tile, greedy in order: when row i comes, its status is final.
    # T cheap sequential steps; a parallel fixed-point iteration was no faster
    # on random boxes and took T passes on a chain of overlaps (35x slower).
    later = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]
    over = later & _overlaps(tb, tc, tb, tc, thr, by_class)
    keep = lax.fori_loop(0, tile, lambda i, keep: keep & ~(over[i] & keep[i]), ta)
    slot = jnp.where(keep, k + jnp.cumsum(keep) - 1, cap)
    kept = kept.at[:, slot].set(tb, mode="drop")
    kept_cls = kept_cls.at[slot].set(tc, mode="drop")
    kept_pos = kept_pos.at[slot].set(t * tile + jnp.arange(tile), mode="drop")
    # The next tile rides in the loop state: sliced inside the body, XLA:CPU
    # fuses the slice into the IoU reductions and runs them ~4x slower.
    nxt = jnp.minimum(t + 1, n // tile - 1) * tile
    tb = lax.dynamic_slice_in_dim(cols, nxt, tile, axis=1)
    tc = lax.dynamic_slice_in_dim(cls, nxt, tile)
    return t + 1, k + keep.sum(), kept, kept_cls, kept_pos, tb, tc

  def cond(state):
    return (state[0] < n // tile) & (state[1] < stop_at)

  big = jnp.iinfo(jnp.int32).max
  kept = (jnp.zeros((5, cap), cols.dtype), jnp.full((cap,), big), jnp.zeros((cap,), jnp.int32))
  state = lax.while_loop(cond, body, (0, 0, *kept, cols[:, :tile], cls[:tile]))
  return state[4], state[1]


def _class_major(c):
  """c: [N] int32 classes of boxes sorted by score -> [N] positions, class by class, stable."""
  n = c.shape[0]
  iota = jnp.arange(n, dtype=jnp.uint32)
  # One sort of a single key (class - min) * N + position is ~4x faster on XLA:CPU
  # than a sort of two arrays; it needs the classes' span * N to fit in 32 bits.
  # Differences are taken in uint32, where wrap-around makes them exact.
  lo = c.min().astype(jnp.uint32)
  span = c.astype(jnp.uint32) - lo
  return lax.cond(
    span.max() <= np.uint32((2**32 - 1) // n - 1),
    lambda: (jnp.sort(span * n + iota) % n).astype(jnp.int32),
    lambda: lax.sort((c, iota.astype(jnp.int32)), num_keys=2)[-1],
  )


@functools.partial(jax.jit, static_argnames=("max_output", "by_class", "tile"))
def _nms(boxes, scores, classes, valid, thr, *, max_output, by_class, tile=TILE):
  """boxes: [N, 4], scores: [N], classes: [N] int32 or None, valid: [N] or None -> [max_output] x 2."""
  n = boxes.shape[0]
  # Defaults made here, inside one compiled program: eager ops cost ~50 us each.
  classes = jnp.zeros((n,), jnp.int32) if classes is None else classes
  valid = jnp.ones((n,), bool) if valid is None else valid
  tile = min(tile, _round_up(n, 8))
  pad = _round_up(n, tile) - n
  iota = jnp.arange(n, dtype=jnp.int32)
  # Decreasing score, equal scores by index: torchvision's stable sort.
  by_score = lax.sort((-scores, iota), num_keys=2)[-1]
  order = by_score
  if by_class:
    # torchvision's coordinate trick, so that IoUs round as in its batched_nms.
    boxes = boxes + (classes.astype(boxes.dtype) * (boxes.max() + 1))[:, None]
    rank = _class_major(classes[by_score])  # positions in by_score, class by class
    order = by_score[rank]
  b = boxes[order]
  cols = jnp.pad(jnp.concatenate([b.T, _area(b)[None]]), ((0, 0), (0, pad)))
  cls = jnp.pad(classes[order], (0, pad), constant_values=jnp.iinfo(jnp.int32).max)
  alive = jnp.pad(valid[order], (0, pad))
  if by_class:
    # No early stop: the last class may hold the best box. The kept boxes' ranks,
    # marked and read back in order, give them by decreasing score.
    cap = n + pad
    pos, k = _greedy(cols, cls, alive, thr, cap=cap, stop_at=n + 1, tile=tile, by_class=True)
    kept_rank = jnp.where(jnp.arange(cap) < k, rank[jnp.minimum(pos, n - 1)], n)
    marked = jnp.zeros((n,), bool).at[kept_rank].set(True, mode="drop")
    (pos,) = jnp.nonzero(marked, size=min(max_output, n), fill_value=0)
  else:
    # Processed by score, NMS stops once max_output boxes are kept.
    cap = _round_up(min(n + pad, max_output - 1 + tile), tile)
    pos, k = _greedy(cols, cls, alive, thr, cap=cap, stop_at=max_output, tile=tile, by_class=False)
  pos = jnp.pad(pos, (0, max(max_output - pos.shape[0], 0)))[:max_output]
  ok = jnp.arange(max_output) < k
  return jnp.where(ok, by_score[pos], 0), ok


def _nms_inputs(boxes, scores, valid, max_output, iou_threshold, fn):
  boxes = _boxes(boxes, "boxes", fn, ndim=2)
  n = boxes.shape[0]
  if np.shape(scores) != (n,):
    raise ValueError(
      f"{fn}: scores must be [N] = [{n}] for boxes {boxes.shape}, got {np.shape(scores)}"
    )
  if _is_concrete(scores) and np.isnan(np.asarray(scores, np.float64)).any():
    raise ValueError(f"{fn}: scores must not be NaN")
  if valid is not None and np.shape(valid) != (n,):
    raise ValueError(f"{fn}: valid must be [N] = [{n}] bool, got shape {np.shape(valid)}")
  if not isinstance(max_output, numbers.Integral) or max_output < 0:
    raise ValueError(f"{fn}: max_output must be an int >= 0, got {max_output!r}")
  thr = _threshold(iou_threshold, boxes.dtype, fn)
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  return boxes, scores, None if valid is None else jnp.asarray(valid, bool), thr


def nms(boxes, scores, iou_threshold, *, max_output, valid=None):
  """Greedy non-maximum suppression with static shapes: exactly `torchvision.ops.nms`.

  boxes: [N, 4] (x1, y1, x2, y2); scores: [N]; a box is dropped when its IoU with
  a kept higher-scoring box is > iou_threshold (a Python float). valid: optional
  [N] bool, False for padding boxes, which are neither kept nor suppress.
  Returns (indices [max_output] int32 by decreasing score, equal scores by index,
  padded with 0; valid [max_output] bool). Runs under jit; check values with `check_boxes`.
  """
  boxes, scores, valid, thr = _nms_inputs(boxes, scores, valid, max_output, iou_threshold, "nms")
  if boxes.shape[0] == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  return _nms(boxes, scores, None, valid, thr, max_output=max_output, by_class=False)


def batched_nms(boxes, scores, classes, iou_threshold, *, max_output, valid=None):
  """`nms` within each class only, as `torchvision.ops.batched_nms`.

  boxes: [N, 4]; scores: [N]; classes: [N] int. Like torchvision, boxes are
  shifted by class * (max coordinate + 1), so IoUs round exactly as in its
  coordinate trick; they are then processed class by class and compared only
  within their class (right for negative coordinates too, unlike the bare trick).
  As with the trick, float32 loses IoU precision once class * coordinates pass
  ~1e6 (ulp 0.06): keep class ids small (contiguous labels, not hashes).
  Returns (indices [max_output] by decreasing score, valid [max_output]).
  """
  fn = "batched_nms"
  boxes, scores, valid, thr = _nms_inputs(boxes, scores, valid, max_output, iou_threshold, fn)
  n = boxes.shape[0]
  if np.shape(classes) != (n,) or not jnp.issubdtype(jnp.result_type(classes), jnp.integer):
    raise ValueError(
      f"{fn}: classes must be [N] = [{n}] int, got shape {np.shape(classes)} "
      f"dtype {jnp.result_type(classes)}"
    )
  if n == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  classes = jnp.asarray(classes, jnp.int32)
  return _nms(boxes, scores, classes, valid, thr, max_output=max_output, by_class=True)
