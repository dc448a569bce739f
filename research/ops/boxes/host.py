"""Host-side numpy IoU and NMS with torchvision's variable-length outputs, for evaluation."""

from __future__ import annotations

import numpy as np

from research.ops.boxes.core import _check_shape, _pairwise_iou, _threshold, check_boxes


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
