"""Boxes: format conversion, IoU, the R-CNN box coder, clipping and non-maximum suppression.

Boxes are `[..., 4]` float (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, as in
torchvision. The functions are pure `jax.numpy` and run under `jax.jit` with
static shapes; `nms` and `batched_nms` return `max_output` indices padded with 0
plus a validity mask, the way detection batches carry padded boxes.

Validation: every function checks shapes at its boundary (shapes are static,
so this works under `jit` too). Values (NaN, x2 < x1) can only be checked on
concrete arrays: the functions do so when called eagerly, and under `jit`
callers run `check_boxes(boxes, name)` on the host where data enters (the
data set, a user's detections), since a traced value cannot raise.

`nms_numpy`, `batched_nms_numpy` and `iou_numpy` are host-side numpy versions
with torchvision's variable-length outputs, for evaluation.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  "BBOX_XFORM_CLIP",
  "check_boxes",
  "xyxy_to_cxcywh",
  "cxcywh_to_xyxy",
  "area",
  "iou",
  "encode",
  "decode",
  "clip",
  "remove_small_boxes",
  "nms",
  "batched_nms",
  "iou_numpy",
  "nms_numpy",
  "batched_nms_numpy",
]

# torchvision's BoxCoder clamp: exp(dw) may grow a box at most 1000/16 times, a
# huge anchor over the smallest stride, so one wild regression cannot overflow.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_shape(x, name: str, fn: str, expected: str, ndim: int | None = None):
  """Last axis must hold the 4 coordinates; `ndim` fixes the rank when given."""
  shape = np.shape(x)
  if len(shape) < 1 or shape[-1] != 4 or (ndim is not None and len(shape) != ndim):
    raise ValueError(f"{fn}: {name} must be {expected}, got shape {shape}")


def check_boxes(boxes, name: str = "boxes", *, fmt: str = "xyxy") -> np.ndarray:
  """Host-side value check of `boxes: [..., 4]`, for use at the data boundary.

  fmt "xyxy": (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; fmt "cxcywh": w, h >= 0.
  Raises ValueError naming `name` for a wrong last axis, NaN or infinite
  coordinates, or a negative width or height. Returns the boxes as numpy.
  Call it outside `jit` (a traced value has no numbers to check).
  """
  if not _is_concrete(boxes):
    raise ValueError(f"check_boxes: {name} is traced; call check_boxes outside jax.jit")
  if fmt not in ("xyxy", "cxcywh"):
    raise ValueError(f"check_boxes: fmt must be 'xyxy' or 'cxcywh', got {fmt!r}")
  boxes = np.asarray(boxes)
  _check_shape(boxes, name, "check_boxes", f"[..., 4] ({fmt})")
  flat = boxes.reshape(-1, 4).astype(np.float64)
  if fmt == "xyxy":
    with np.errstate(invalid="ignore"):  # inf - inf; the finite check names that box first
      w, h, what = flat[:, 2] - flat[:, 0], flat[:, 3] - flat[:, 1], "x1 <= x2 and y1 <= y2"
  else:
    w, h, what = flat[:, 2], flat[:, 3], "w >= 0 and h >= 0"
  for bad, expected in (
    (~np.isfinite(flat).all(axis=1), "finite coordinates"),
    ((w < 0) | (h < 0), what),
  ):
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(
        f"{name}: expected {fmt} boxes with {expected}, got {tuple(flat[row].tolist())} at box {row}"
      )
  return boxes


def _boxes(boxes, name: str, fn: str, *, ndim: int | None = None, fmt: str = "xyxy"):
  """Shape check always, value check when concrete; returns a float array."""
  expected = "[N, 4]" if ndim == 2 else "[..., 4]"
  _check_shape(boxes, name, fn, f"{expected} ({'x1, y1, x2, y2' if fmt == 'xyxy' else fmt})", ndim)
  if _is_concrete(boxes):
    check_boxes(boxes, f"{fn}: {name}", fmt=fmt)
  boxes = jnp.asarray(boxes)
  return boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))


def xyxy_to_cxcywh(boxes) -> jax.Array:
  """boxes: [..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
  b = _boxes(boxes, "boxes", "xyxy_to_cxcywh")
  x1, y1, x2, y2 = jnp.unstack(b, axis=-1)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes) -> jax.Array:
  """boxes: [..., 4] (cx, cy, w, h) with w, h >= 0 -> [..., 4] (x1, y1, x2, y2)."""
  b = _boxes(boxes, "boxes", "cxcywh_to_xyxy", fmt="cxcywh")
  cx, cy, w, h = jnp.unstack(b, axis=-1)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _area(b):
  return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def area(boxes) -> jax.Array:
  """boxes: [..., 4] (x1, y1, x2, y2) -> [...] (x2 - x1) * (y2 - y1)."""
  return _area(_boxes(boxes, "boxes", "area"))


def _pairwise_iou(a, b, xp):
  """a: [N, 4], b: [M, 4] -> [N, M], in torchvision's order of operations (xp: jnp or np)."""
  rb = xp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = xp.maximum(rb - xp.maximum(a[:, None, :2], b[None, :, :2]), 0)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (_area(a)[:, None] + _area(b)[None, :] - inter)


def iou(boxes1, boxes2) -> jax.Array:
  """Pairwise intersection over union. boxes1: [N, 4], boxes2: [M, 4] (x1, y1, x2, y2) -> [N, M].

  Two empty (zero-area) boxes give 0 / 0 = NaN, as in torchvision.
  """
  a = _boxes(boxes1, "boxes1", "iou", ndim=2)
  return _pairwise_iou(a, _boxes(boxes2, "boxes2", "iou", ndim=2), jnp)


def _weights(weights, fn: str):
  if len(weights) != 4 or any(not isinstance(w, numbers.Real) or w <= 0 for w in weights):
    raise ValueError(f"{fn}: weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
  return tuple(float(w) for w in weights)


def _centers(b):
  w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
  return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """R-CNN regression targets of `boxes` relative to `anchors` (torchvision's BoxCoder.encode_single).

  boxes, anchors: [..., 4] (x1, y1, x2, y2), broadcastable; anchors of positive size.
  Returns [..., 4] (tx, ty, tw, th) = (wx dx / wa, wy dy / ha, ww log(w / wa), wh log(h / ha)),
  dx, dy the offset of the centers. Faster R-CNN's box head uses weights (10, 10, 5, 5).
  """
  wx, wy, ww, wh = _weights(weights, "encode")
  gx, gy, gw, gh = _centers(_boxes(boxes, "boxes", "encode"))
  ax, ay, aw, ah = _centers(_boxes(anchors, "anchors", "encode"))
  return jnp.stack(
    [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * jnp.log(gw / aw), wh * jnp.log(gh / ah)],
    axis=-1,
  )


def decode(
  deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=BBOX_XFORM_CLIP
) -> jax.Array:
  """Inverse of `encode` (torchvision's BoxCoder.decode_single): boxes from regression outputs.

  deltas: [..., 4] (tx, ty, tw, th); anchors: [..., 4] (x1, y1, x2, y2), broadcastable.
  tw / ww and th / wh are clamped at `bbox_xform_clip` (log(1000 / 16)) before exp.
  Returns [..., 4] (x1, y1, x2, y2).
  """
  wx, wy, ww, wh = _weights(weights, "decode")
  _check_shape(deltas, "deltas", "decode", "[..., 4] (tx, ty, tw, th)")
  anchors = _boxes(anchors, "anchors", "decode")
  deltas = jnp.asarray(deltas).astype(anchors.dtype)
  ax, ay, aw, ah = _centers(anchors)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, bbox_xform_clip)
  dh = jnp.minimum(deltas[..., 3] / wh, bbox_xform_clip)
  cx, cy = dx * aw + ax, dy * ah + ay
  half_w, half_h = 0.5 * (jnp.exp(dw) * aw), 0.5 * (jnp.exp(dh) * ah)
  return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def clip(boxes, size) -> jax.Array:
  """Clips boxes: [..., 4] (x1, y1, x2, y2) to an image of size (height, width) -> [..., 4].

  `size` may be traced (a per-image size under jit).
  """
  b = _boxes(boxes, "boxes", "clip")
  if np.shape(size) != (2,):
    raise ValueError(f"clip: size must be (height, width), got {size!r}")
  height, width = size[0], size[1]
  x = jnp.clip(b[..., 0::2], 0, width)
  y = jnp.clip(b[..., 1::2], 0, height)
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def remove_small_boxes(boxes, min_size) -> jax.Array:
  """Static-shape `torchvision.ops.remove_small_boxes`: boxes [..., 4] -> keep mask [...] bool.

  True where both width and height are >= min_size; `jnp.flatnonzero(mask)` gives
  torchvision's indices.
  """
  b = _boxes(boxes, "boxes", "remove_small_boxes")
  return (b[..., 2] - b[..., 0] >= min_size) & (b[..., 3] - b[..., 1] >= min_size)


def _threshold(iou_threshold, dtype, fn: str):
  """The largest `dtype` number <= iou_threshold.

  torchvision compares the float32 IoU with the threshold as a double; for a
  float32 v, v > t (real t) exactly when v > round_down(t), so the comparison in
  float32 matches bit for bit (round-to-nearest could move t up past some v).
  """
  if not isinstance(iou_threshold, numbers.Real) or math.isnan(iou_threshold):
    raise ValueError(f"{fn}: iou_threshold must be a real number, got {iou_threshold!r}")
  t = np.asarray(iou_threshold, dtype)
  if float(t) > float(iou_threshold):
    t = np.nextafter(t, np.asarray(-np.inf, dtype))
  return t


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


def iou_numpy(boxes1, boxes2) -> np.ndarray:
  """Host-side `iou`: boxes1 [N, 4], boxes2 [M, 4] (x1, y1, x2, y2) -> [N, M]."""
  _check_shape(boxes1, "boxes1", "iou_numpy", "[N, 4]", 2)
  _check_shape(boxes2, "boxes2", "iou_numpy", "[M, 4]", 2)
  a, b = check_boxes(boxes1, "iou_numpy: boxes1"), check_boxes(boxes2, "iou_numpy: boxes2")
  with np.errstate(invalid="ignore", divide="ignore"):
    return _pairwise_iou(a, b, np)


def nms_numpy(boxes, scores, iou_threshold) -> np.ndarray:
  """Host-side greedy NMS: boxes [N, 4], scores [N] -> kept indices [K] int64 by decreasing score.

  Exactly `torchvision.ops.nms` (same IoU expression and comparison).
  """
  _check_shape(boxes, "boxes", "nms_numpy", "[N, 4] (x1, y1, x2, y2)", 2)
  b = check_boxes(boxes, "nms_numpy: boxes")
  b = b.astype(np.promote_types(b.dtype, np.float32))
  scores = np.asarray(scores)
  if scores.shape != (len(b),) or np.isnan(scores).any():
    raise ValueError(f"nms_numpy: scores must be [N] = [{len(b)}] without NaN, got {scores.shape}")
  thr = _threshold(iou_threshold, b.dtype, "nms_numpy")
  order = np.argsort(-scores.astype(np.float64), kind="stable")
  keep = []
  while order.size:
    keep.append(order[0])
    with np.errstate(invalid="ignore", divide="ignore"):
      # NaN IoU (two empty boxes) does not suppress, as in torchvision.
      order = order[1:][~(_pairwise_iou(b[order[:1]], b[order[1:]], np)[0] > thr)]
  return np.asarray(keep, np.int64)


def batched_nms_numpy(boxes, scores, classes, iou_threshold) -> np.ndarray:
  """Host-side `batched_nms`: one `nms_numpy` per class -> kept indices [K] by decreasing score."""
  b = check_boxes(boxes, "batched_nms_numpy: boxes")
  scores, classes = np.asarray(scores), np.asarray(classes)
  if classes.shape != scores.shape:
    raise ValueError(
      f"batched_nms_numpy: classes must be [N] = {scores.shape}, got {classes.shape}"
    )
  keep = [np.zeros((0,), np.int64)]
  for c in np.unique(classes):
    members = np.flatnonzero(classes == c)
    keep.append(members[nms_numpy(b[members], scores[members], iou_threshold)])
  keep = np.concatenate(keep)
  return keep[np.lexsort((keep, -scores[keep]))]
