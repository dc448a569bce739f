"""Box coordinates, pairwise IoU, the R-CNN box coder, clipping, and the input checks
shared by the other box modules (research.ops.boxes documents the conventions)."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's BoxCoder clamp: exp(dw) may grow a box at most 1000/16 times, a
# huge anchor over the smallest stride, so one wild regression cannot overflow.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _is_concrete(x) -> bool:
  """False for a value traced by jit, vmap or grad, whose numbers the host cannot check; the
  value checks of research.ops (boxes, rois, NMS scores) run only on concrete inputs."""
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
