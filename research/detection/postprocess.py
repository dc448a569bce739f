"""Detections from the RoI heads' outputs: torchvision's `RoIHeads.postprocess_detections`
with static shapes.

    postprocess         softmax, each class's box decoded and clipped, background dropped,
                        score threshold, small boxes removed, NMS per class, the best
                        detections_per_img; padded, with a validity mask
    select_detections   the last three steps for one image's candidates, shared by the
                        R-CNN heads and YOLO's decoding

`research.detection.roi_heads` re-exports these names.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.ops import boxes as box_ops

__all__ = ["postprocess", "select_detections", "BOX_WEIGHTS"]

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's RoIHeads box coder


@functools.partial(jax.jit, static_argnames=("score_thresh", "nms_thresh", "top", "min_size", "w"))
def _postprocess(
  logits, regression, proposals, valid, image_hw, *, score_thresh, nms_thresh, top, min_size, w
):
  r, k = logits.shape[1:]

  def one(logits, regression, proposals, valid, hw):
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1:]  # background dropped
    deltas = regression.reshape(r, k, 4)[:, 1:].astype(jnp.float32)
    boxes = box_ops.clip(box_ops.decode(deltas, proposals[:, None, :], w), hw)
    labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (r, k - 1))
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = jnp.repeat(valid, k - 1) & (scores > score_thresh)
    return select_detections(boxes, scores, labels, keep, min_size, nms_thresh, top)

  return jax.vmap(one)(logits, regression, proposals, valid, image_hw)


def select_detections(boxes, scores, labels, keep, min_size, nms_thresh, top) -> dict:
  """One image's candidates -> its detections: boxes [M, 4] (clipped), scores [M], labels
  [M] int, keep [M] bool (those above the score threshold) -> sides >= min_size, NMS per
  class at nms_thresh, the best `top` by score: {"boxes" [top, 4], "scores" [top],
  "labels" [top], "valid" [top] bool}, padding zeros. Shared by the R-CNN heads and YOLO."""
  keep = keep & box_ops.remove_small_boxes(boxes, min_size)
  # Dropped boxes at 0: batched_nms offsets classes by the largest coordinate, which
  # is then that of the kept boxes, as torchvision's over its filtered boxes.
  boxes = jnp.where(keep[:, None], boxes, 0)
  index, ok = box_ops.batched_nms(boxes, scores, labels, nms_thresh, max_output=top, valid=keep)
  return {
    "boxes": jnp.where(ok[:, None], boxes[index], 0),
    "scores": jnp.where(ok, scores[index], 0),
    "labels": jnp.where(ok, labels[index], 0),
    "valid": ok,
  }


def postprocess(
  class_logits,
  box_regression,
  proposals,
  proposal_valid,
  image_hw,
  *,
  score_thresh: float = 0.05,
  nms_thresh: float = 0.5,
  detections_per_img: int = 100,
  min_size: float = 1e-2,
  weights=BOX_WEIGHTS,
) -> dict:
  """torchvision's RoIHeads.postprocess_detections with static shapes.

  class_logits: [N, R, K] (or [N * R, K]); box_regression: [N, R, 4K]; proposals: [N, R, 4];
  proposal_valid: [N, R] bool; image_hw: [N, 2] each image's (height, width), may be
  traced. Softmax, each class's box decoded (weights) and clipped, background dropped,
  scores > score_thresh and sides >= min_size kept, NMS per class, the best
  detections_per_img by score. Returns {"boxes" [N, D, 4], "scores" [N, D], "labels"
  [N, D] int32 (>= 1), "valid" [N, D] bool}, D = detections_per_img, padding zeros.
  """
  proposals = jnp.asarray(proposals)
  if proposals.ndim != 3 or proposals.shape[-1] != 4:
    raise ValueError(f"postprocess: proposals must be [N, R, 4], got {proposals.shape}")
  n, r = proposals.shape[:2]
  k = class_logits.shape[-1]
  class_logits = jnp.asarray(class_logits).reshape(n, r, k)
  box_regression = jnp.asarray(box_regression).reshape(n, r, 4 * k)
  if np.shape(proposal_valid) != (n, r) or np.shape(image_hw) != (n, 2):
    raise ValueError(
      f"postprocess: proposal_valid must be [{n}, {r}] and image_hw [{n}, 2], got "
      f"{np.shape(proposal_valid)} and {np.shape(image_hw)}"
    )
  return _postprocess(
    class_logits,
    box_regression,
    proposals.astype(jnp.promote_types(proposals.dtype, jnp.float32)),
    jnp.asarray(proposal_valid, bool),
    jnp.asarray(image_hw, jnp.float32),
    score_thresh=float(score_thresh),
    nms_thresh=float(nms_thresh),
    top=int(detections_per_img),
    min_size=float(min_size),
    w=tuple(float(v) for v in weights),
  )
