"""Proposal quality as the selective search paper measures it: recall and MABO.

Both take one image (proposals [N, 4], gt_boxes [M, 4]) or a data set as lists
with one array per image, and pool over every ground truth box of all images:

  best overlap of a gt box = max over that image's proposals of IoU
  recall                  = fraction of gt boxes whose best overlap >= threshold
  ABO of a class          = mean best overlap of its gt boxes
  MABO                    = mean over classes of the ABO (the paper's definition)

Without class labels `mabo` is the mean best overlap over all gt boxes, the
ABO of one class holding every object; the paper's per-class MABO needs
`classes`. An image without proposals gives its gt boxes a best overlap of 0.
"""

from __future__ import annotations

import numpy as np


def _is_one_image(gt_boxes) -> bool:
  """[M, 4] (array or nested lists) is one image; a list of [M_i, 4] arrays is a data set."""
  if not isinstance(gt_boxes, (list, tuple)):
    return True
  try:
    return np.asarray(gt_boxes, dtype=np.float64).ndim == 2
  except ValueError:  # ragged: images with different numbers of boxes
    return False


def _images(name: str, value, count: int | None):
  images = list(value)
  if count is not None and len(images) != count:
    raise ValueError(f"{name}: expected one entry per image ({count}), got {len(images)}")
  return images


def best_overlaps(proposals, gt_boxes) -> np.ndarray:
  """float64 [M] best IoU of each gt box with any proposal of its image, images concatenated.

  proposals: [N, 4] or a list of [N_i, 4]; gt_boxes: [M, 4] or a list of
  [M_i, 4], (x1, y1, x2, y2). ValueError for no gt box at all or a gt box of
  zero area (e.g. padding rows kept by mistake).
  """
  # Imported here, not at the top, so that selective search's worker processes never load jax.
  from research.ops import boxes

  if _is_one_image(gt_boxes):
    proposals, gt_boxes = [proposals], [gt_boxes]
  gt_list = _images("gt_boxes", gt_boxes, None)
  proposal_list = _images("proposals", proposals, len(gt_list))
  out = []
  for p, g in zip(proposal_list, gt_list):
    g = boxes.check_boxes(np.asarray(g, np.float64).reshape(-1, 4), "gt_boxes")
    empty = (g[:, 2] <= g[:, 0]) | (g[:, 3] <= g[:, 1])
    if empty.any():
      raise ValueError(
        f"gt_boxes: expected boxes of positive area, got {g[np.argmax(empty)].tolist()} "
        "(padding rows? keep the first num_objects)"
      )
    p = np.asarray(p, np.float64).reshape(-1, 4)
    out.append(boxes.iou_numpy(g, p).max(1) if len(p) else np.zeros(len(g)))
  overlaps = np.concatenate(out) if out else np.zeros(0)
  if not len(overlaps):
    raise ValueError("gt_boxes: expected at least one ground truth box, got none")
  return overlaps


def recall(proposals, gt_boxes, threshold: float = 0.5) -> float:
  """Fraction of gt boxes covered by a proposal with IoU >= threshold (shapes: `best_overlaps`)."""
  if not 0 <= threshold <= 1:
    raise ValueError(f"recall: threshold must be in [0, 1], got {threshold!r}")
  return float(np.mean(best_overlaps(proposals, gt_boxes) >= threshold))


def mabo(proposals, gt_boxes, classes=None) -> float:
  """Mean average best overlap (shapes: `best_overlaps`).

  classes: None, or int [M] (a list of [M_i] for a data set) labels of the gt
  boxes; then the mean over classes of each class's average best overlap, as
  the paper reports MABO. Without it, the mean best overlap of all gt boxes.
  """
  overlaps = best_overlaps(proposals, gt_boxes)
  if classes is None:
    return float(overlaps.mean())
  if _is_one_image(gt_boxes):
    classes = [classes]
  labels = np.concatenate([np.asarray(c).reshape(-1) for c in _images("classes", classes, None)])
  if labels.shape != overlaps.shape:
    raise ValueError(
      f"classes: expected one label per gt box ({len(overlaps)}), got {labels.shape[0]}"
    )
  return float(np.mean([overlaps[labels == c].mean() for c in np.unique(labels)]))
