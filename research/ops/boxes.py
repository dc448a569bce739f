"""Boxes: format conversion, IoU, the R-CNN box coder, clipping and non-maximum suppression.

Boxes are `[..., 4]` float (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, as in
torchvision. Everything here is pure `jax.numpy` and runs under `jax.jit` with
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
  bad = ~np.isfinite(flat).all(axis=1)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{name}: coordinates must be finite, got {tuple(flat[row])} at box {row}")
  if fmt == "xyxy":
    w, h, what = flat[:, 2] - flat[:, 0], flat[:, 3] - flat[:, 1], "x1 <= x2 and y1 <= y2"
  else:
    w, h, what = flat[:, 2], flat[:, 3], "w >= 0 and h >= 0"
  bad = (w < 0) | (h < 0)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(
      f"{name}: expected {fmt} boxes with {what}, got {tuple(flat[row])} at box {row}"
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


def iou(boxes1, boxes2) -> jax.Array:
  """Pairwise intersection over union. boxes1: [N, 4], boxes2: [M, 4] (x1, y1, x2, y2) -> [N, M].

  Two empty (zero-area) boxes give 0 / 0 = NaN, as in torchvision.
  """
  a = _boxes(boxes1, "boxes1", "iou", ndim=2)
  b = _boxes(boxes2, "boxes2", "iou", ndim=2)
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (_area(a)[:, None] + _area(b)[None, :] - inter)


def _weights(weights, fn: str):
  if len(weights) != 4 or any(not isinstance(w, numbers.Real) or w <= 0 for w in weights):
    raise ValueError(f"{fn}: weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
  return tuple(float(w) for w in weights)


def _centers(b):
  w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
  return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """R-CNN regression targets of `boxes` relative to `anchors` (torchvision's BoxCoder.encode).

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


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=BBOX_XFORM_CLIP) -> jax.Array:
  """Inverse of `encode` (torchvision's BoxCoder.decode_single): boxes from regression outputs.

  deltas: [..., 4] (tx, ty, tw, th); anchors: [..., 4] (x1, y1, x2, y2), broadcastable.
  tw / ww and th / wh are clamped at `clip` (log(1000 / 16)) before exp.
  Returns [..., 4] (x1, y1, x2, y2).
  """
  wx, wy, ww, wh = _weights(weights, "decode")
  _check_shape(deltas, "deltas", "decode", "[..., 4] (tx, ty, tw, th)")
  anchors = _boxes(anchors, "anchors", "decode")
  deltas = jnp.asarray(deltas).astype(anchors.dtype)
  ax, ay, aw, ah = _centers(anchors)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
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


# Tile of sorted boxes resolved at a time, and chunk of kept boxes it is compared
# with: [TILE, TILE] IoU blocks stay in cache; see benchmarks/boxes.py.
TILE = 256


def _suppressed(kept, kept_cls, tile, tile_cls, thr, same_class_only):
  """[C] kept and [T] tile boxes as (x1, y1, x2, y2, area) rows [5, C], [5, T] -> [C, T] bool."""
  w = jnp.minimum(kept[2][:, None], tile[2]) - jnp.maximum(kept[0][:, None], tile[0])
  h = jnp.minimum(kept[3][:, None], tile[3]) - jnp.maximum(kept[1][:, None], tile[1])
  inter = jnp.maximum(w, 0) * jnp.maximum(h, 0)
  # torchvision's expression, term for term, so IoUs round the same way.
  over = inter / (kept[4][:, None] + tile[4] - inter) > thr
  return over & (kept_cls[:, None] == tile_cls) if same_class_only else over


@functools.partial(jax.jit, static_argnames=("max_output", "tile", "by_class"))
def _nms_sorted(cols, cls, alive, thr, *, max_output, tile, by_class):
  """Greedy NMS over boxes in processing order, a tile at a time.

  cols: [5, Np] (x1, y1, x2, y2, area); cls: [Np] int32, non-decreasing when
  by_class; alive: [Np] bool (padding False); Np a multiple of `tile`. Returns
  (positions [max_output] in processing order, ascending, padded with 0; valid).
  """
  n = cols.shape[1]
  # Processed in score order, NMS can stop once max_output boxes are kept; by class, it cannot.
  cap = _round_up(n if by_class else min(n, max_output - 1 + tile), tile)
  big = jnp.iinfo(jnp.int32).max

  def body(state):
    t, k, kept, kept_cls, kept_pos = state
    start = t * tile
    tb = lax.dynamic_slice_in_dim(cols, start, tile, axis=1)
    tc = lax.dynamic_slice_in_dim(cls, start, tile)
    ta = lax.dynamic_slice_in_dim(alive, start, tile)
    # Only kept boxes can suppress; by class they are sorted, so those of this
    # tile's classes start at the first kept box of class >= the tile's first.
    first = jnp.searchsorted(kept_cls, tc[0]) // tile if by_class else 0

    def against_kept(c, a):
      kb = lax.dynamic_slice_in_dim(kept, c * tile, tile, axis=1)
      kc = lax.dynamic_slice_in_dim(kept_cls, c * tile, tile)
      return a & ~_suppressed(kb, kc, tb, tc, thr, by_class).any(axis=0)

    ta = lax.fori_loop(first, (k + tile - 1) // tile, against_kept, ta)
    # Within the tile, box j survives iff no surviving i < j overlaps it. That
    # recursion has one solution, reached by iterating to a fixed point; each
    # pass settles at least the next box, and random boxes need a handful.
    over = _suppressed(tb, tc, tb, tc, thr, by_class)
    over &= jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]

    def resolve(s):
      keep = ta & ~(over & s[0][:, None]).any(axis=0)
      return keep, (keep != s[0]).any()

    keep, _ = lax.while_loop(lambda s: s[1], resolve, (ta, ta.any()))
    slot = jnp.where(keep, k + jnp.cumsum(keep) - 1, cap)
    kept = kept.at[:, slot].set(tb, mode="drop")
    kept_cls = kept_cls.at[slot].set(tc, mode="drop")
    kept_pos = kept_pos.at[slot].set(start + jnp.arange(tile), mode="drop")
    return t + 1, k + keep.sum(), kept, kept_cls, kept_pos

  def cond(state):
    t, k = state[:2]
    return (t < n // tile) & (by_class | (k < max_output))

  init = (0, 0, jnp.zeros((5, cap), cols.dtype), jnp.full((cap,), big), jnp.zeros((cap,), int))
  _, k, _, _, kept_pos = lax.while_loop(cond, body, init)
  valid = jnp.arange(cap) < k
  if by_class:
    # Back to processing order: kept positions as a mask, its first max_output entries.
    mask = jnp.zeros((n,), bool).at[jnp.where(valid, kept_pos, n)].set(True, mode="drop")
    (pos,) = jnp.nonzero(mask, size=max_output, fill_value=0)
    return pos, jnp.arange(max_output) < k
  pad = max(max_output - cap, 0)
  pos = jnp.pad(jnp.where(valid, kept_pos, 0), (0, pad))[:max_output]
  return pos, jnp.pad(valid, (0, pad))[:max_output]


def _nms_inputs(boxes, scores, valid, max_output, fn):
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
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  return boxes, jnp.asarray(scores), valid


def _run(boxes, order, cls, valid, thr, max_output, by_class):
  """Pads boxes taken in `order` to a multiple of the tile and runs the tiled NMS."""
  n = boxes.shape[0]
  tile = min(TILE, _round_up(n, 8))
  pad = _round_up(n, tile) - n
  b = boxes[order]
  cols = jnp.pad(jnp.concatenate([b.T, _area(b)[None]]), ((0, 0), (0, pad)))
  cls = jnp.pad(cls[order], (0, pad), constant_values=jnp.iinfo(jnp.int32).max)
  alive = jnp.pad(valid[order], (0, pad))
  pos, ok = _nms_sorted(cols, cls, alive, thr, max_output=max_output, tile=tile, by_class=by_class)
  return jnp.where(ok, order[pos], 0), ok


def nms(boxes, scores, iou_threshold, *, max_output, valid=None):
  """Greedy non-maximum suppression with static shapes, exactly `torchvision.ops.nms`.

  boxes: [N, 4] (x1, y1, x2, y2); scores: [N]; a box is dropped when its IoU with
  a kept higher-scoring box is > iou_threshold (a Python float). valid: optional
  [N] bool, False for padding boxes, which are neither kept nor suppress.
  Returns (indices [max_output] int32 by decreasing score, equal scores by index,
  padded with 0; valid [max_output] bool). Runs under jit; check values with `check_boxes`.
  """
  boxes, scores, valid = _nms_inputs(boxes, scores, valid, max_output, "nms")
  thr = _threshold(iou_threshold, boxes.dtype, "nms")
  if boxes.shape[0] == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  order = jnp.argsort(scores, descending=True, stable=True)
  cls = jnp.zeros((boxes.shape[0],), jnp.int32)
  return _run(boxes, order, cls, valid, thr, max_output, by_class=False)


def batched_nms(boxes, scores, classes, iou_threshold, *, max_output, valid=None):
  """`nms` within each class only, as `torchvision.ops.batched_nms`.

  boxes: [N, 4]; scores: [N]; classes: [N] int. Like torchvision, boxes are
  shifted by class * (max coordinate + 1) so that IoUs round exactly as its
  coordinate trick does; boxes are then processed class by class and only
  compared within their class, which is also right for negative coordinates.
  Returns (indices [max_output] by decreasing score, valid [max_output]).
  """
  boxes, scores, valid = _nms_inputs(boxes, scores, valid, max_output, "batched_nms")
  n = boxes.shape[0]
  if np.shape(classes) != (n,) or not jnp.issubdtype(jnp.result_type(classes), jnp.integer):
    raise ValueError(
      f"batched_nms: classes must be [N] = [{n}] int, got shape {np.shape(classes)} "
      f"dtype {jnp.result_type(classes)}"
    )
  thr = _threshold(iou_threshold, boxes.dtype, "batched_nms")
  if n == 0 or max_output == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  classes = jnp.asarray(classes, jnp.int32)
  boxes = boxes + (classes.astype(boxes.dtype) * (boxes.max() + 1))[:, None]
  by_score = jnp.argsort(scores, descending=True, stable=True)
  # Stable by class, so scores stay decreasing (ties by index) inside each class.
  order = by_score[jnp.argsort(classes[by_score], stable=True)]
  idx, ok = _run(boxes, order, classes, valid, thr, n, by_class=True)
  # Kept boxes come class by class; their ranks in `by_score` restore the score order.
  rank = jnp.zeros((n,), jnp.int32).at[by_score].set(jnp.arange(n, dtype=jnp.int32))
  top = jnp.argsort(jnp.where(ok, rank[idx], n))[:max_output]
  k = min(max_output, n)
  return (
    jnp.pad(jnp.where(ok[top], idx[top], 0), (0, max_output - k)),
    jnp.pad(ok[top], (0, max_output - k)),
  )


def iou_numpy(boxes1, boxes2) -> np.ndarray:
  """Host-side `iou`: boxes1 [N, 4], boxes2 [M, 4] (x1, y1, x2, y2) -> [N, M]."""
  a = check_boxes(boxes1, "iou_numpy: boxes1")
  b = check_boxes(boxes2, "iou_numpy: boxes2")
  _check_shape(a, "boxes1", "iou_numpy", "[N, 4]", 2)
  _check_shape(b, "boxes2", "iou_numpy", "[M, 4]", 2)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = np.maximum(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  with np.errstate(invalid="ignore", divide="ignore"):
    return inter / (_area(a)[:, None] + _area(b)[None, :] - inter)


def nms_numpy(boxes, scores, iou_threshold) -> np.ndarray:
  """Host-side greedy NMS: boxes [N, 4], scores [N] -> kept indices [K] int64 by decreasing score.

  Exactly `torchvision.ops.nms` (same IoU expression and comparison).
  """
  b = check_boxes(boxes, "nms_numpy: boxes")
  _check_shape(b, "boxes", "nms_numpy", "[N, 4] (x1, y1, x2, y2)", 2)
  b = b.astype(np.promote_types(b.dtype, np.float32))
  scores = np.asarray(scores)
  if scores.shape != (len(b),) or np.isnan(scores).any():
    raise ValueError(f"nms_numpy: scores must be [N] = [{len(b)}] without NaN, got {scores.shape}")
  thr = _threshold(iou_threshold, b.dtype, "nms_numpy")
  x1, y1, x2, y2 = b.T
  areas = _area(b)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
    h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
      # NaN IoU (two empty boxes) does not suppress, as in torchvision.
      order = rest[~(inter / (areas[i] + areas[rest] - inter) > thr)]
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
