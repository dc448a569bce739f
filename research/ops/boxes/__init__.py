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

from research.ops.boxes.core import (
  BBOX_XFORM_CLIP,
  area,
  check_boxes,
  clip,
  cxcywh_to_xyxy,
  decode,
  encode,
  iou,
  remove_small_boxes,
  xyxy_to_cxcywh,
)
from research.ops.boxes.host import batched_nms_numpy, iou_numpy, nms_numpy
from research.ops.boxes.nms import batched_nms, nms

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
