"""Detection evaluation: PASCAL VOC AP and COCO AP/AR, for boxes and masks, side by side.

Why VOC and COCO numbers differ on the same detections:
  - IoU: VOC AP matches at IoU >= 0.5 only; COCO "AP" averages ten thresholds
    0.50:0.05:0.95, and "AP50" is the number comparable with VOC.
  - Interpolation: VOC2007 averages the precision envelope at 11 recalls 0, 0.1, ..., 1
    (`use_07_metric=True`); VOC2010+ integrates the envelope exactly (the area metric);
    COCO averages it at 101 recalls 0, 0.01, ..., 1.
  - Matching: VOC pairs a detection with the ground truth it overlaps most and counts it
    false when that one is already taken; COCO takes the best one not yet taken.
  - COCO keeps the 100 highest-scoring detections per image and class (pycocotools'
    maxDets applies per image and category); VOC keeps all.
  - Ignored objects: VOC "difficult" and COCO "iscrowd". Here both metrics ignore both
    flags, each in its own way: VOC leaves a detection whose best match is such an object
    out of the curve (neither true nor false positive); COCO gets both as iscrowd=1 and
    matches them by intersection over the detection's area.
  - Classes without (non-ignored) ground truth are left out of the mean by both: VOC
    reports NaN for them here, COCO -1.
VOC here follows the devkit (VOCevaldet.m, py-faster-rcnn's voc_eval.py): a match needs
IoU >= threshold (the Python port has >), the 11 points are its np.arange(0, 1.1, 0.1),
equal scores go by image, then detection index (its quicksort leaves them arbitrary).

Boxes are continuous pixel-edge coordinates (x1, y1, x2, y2): a box over pixel columns
0..9 has x1 = 0, x2 = 10, width x2 - x1, for both metrics. The VOC devkit instead stores
1-based inclusive pixel indices and adds 1 to widths and heights; convert its boxes with
(x1 - 1, y1 - 1, x2, y2). COCO wants (x, y, w, h); `evaluate_coco` converts.

Input: `detections` and `ground_truths` are sequences with one dict of arrays per image
(numpy or jax), in the same image order, or each one batched dict whose arrays have a
leading [B] axis (see `unbatch`). Ground truth keys: "boxes" [G, 4] float, "labels" [G]
int in [0, num_classes), optional "difficult" [G] bool, "crowd" [G] bool and "masks" (or
"instance_masks") [G, H, W] bool or int (nonzero inside). Detection keys: "boxes" [D, 4],
"scores" [D], "labels" [D], optional "masks" [D, H, W] (threshold Mask R-CNN's
probabilities first). Padded model outputs pass as they are: rows are used where
"valid" [N] bool is True and below "num" / "num_objects" / "num_detections" (an int)
when given; other rows are not read or checked. Bad input raises ValueError naming the
argument, what was expected and what was received; so do zero images.

The YOLO paper's error analysis (Hoiem et al.'s correct / localization / similar / other /
background categories) is `error_analysis` and `plot_error_pies`, in `detection_errors`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np

from research.evaluate.detection_errors import error_analysis, plot_error_pies
from research.ops.boxes import check_boxes, iou_numpy

__all__ = ["COCO_KEYS", "unbatch", "voc_ap", "evaluate_voc", "evaluate_coco", "evaluate"]
__all__ += ["error_analysis", "plot_error_pies"]  # re-exported from detection_errors

# COCOeval.stats in its order.
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_COUNTS = ("num", "num_objects", "num_detections")


def unbatch(batch: Mapping, keep=None) -> list[dict]:
  """A batched dict (every value [B, ...]) -> B per-image dicts of numpy arrays.

  keep: optional [B] bool, False for padded images (the "mask" of `eval_batches`), which
  are dropped; pass the same `keep` for detections and ground truths to keep them paired.
  """
  arrays = {k: np.asarray(v) for k, v in batch.items()}
  sizes = {k: a.shape[0] if a.ndim else None for k, a in arrays.items()}
  b = next(iter(sizes.values()), 0)
  if any(s != b for s in sizes.values()):
    raise ValueError(f"unbatch: batch values must share a leading [B] axis, got {sizes}")
  keep = np.ones((b,), bool) if keep is None else np.asarray(keep)
  if keep.shape != (b,) or keep.dtype != bool:
    raise ValueError(f"unbatch: keep must be [B] = [{b}] bool, got {keep.shape} {keep.dtype}")
  return [{k: a[i] for k, a in arrays.items()} for i in np.flatnonzero(keep)]


def _rows(d: Mapping, n: int, name: str) -> np.ndarray:
  """[n] bool: the rows that "valid" and the counts leave in."""
  keep = np.ones((n,), bool)
  if "valid" in d:
    valid = np.asarray(d["valid"])
    if valid.shape != (n,) or valid.dtype != bool:
      raise ValueError(f"{name}['valid']: expected [{n}] bool, got {valid.shape} {valid.dtype}")
    keep &= valid
  for key in _COUNTS:
    if key in d:
      num = np.asarray(d[key])
      if num.shape != () or not np.issubdtype(num.dtype, np.integer) or not 0 <= num <= n:
        raise ValueError(f"{name}[{key!r}]: expected an int in [0, {n}], got {d[key]!r}")
      keep &= np.arange(n) < num
  return keep


def _masks(d: Mapping, keep, name: str) -> np.ndarray:
  key = "masks" if "masks" in d else "instance_masks"
  masks = np.asarray(d[key])
  if masks.ndim != 3 or len(masks) != len(keep) or masks.dtype.kind not in "bui":
    raise ValueError(
      f"{name}[{key!r}]: expected [{len(keep)}, H, W] bool or int (threshold float masks "
      f"first), got {masks.shape} {masks.dtype}"
    )
  return masks[keep] != 0


def _image(d, name: str, *, is_det: bool, masks: str, num_classes: int | None) -> dict:
  """One image's dict -> its valid rows as checked numpy arrays (masks only when wanted)."""
  if not isinstance(d, Mapping):
    raise ValueError(f"{name}: expected a dict of arrays, got {type(d).__name__}")
  need = ("boxes", "labels") + (("scores",) if is_det else ())
  if missing := [k for k in need if k not in d]:
    raise ValueError(f"{name}: expected keys {need}, missing {missing}; got {sorted(d)}")
  boxes = np.asarray(d["boxes"])
  if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "fiu":
    raise ValueError(
      f"{name}['boxes']: expected [N, 4] float (x1, y1, x2, y2), got {boxes.shape} {boxes.dtype}"
    )
  n = len(boxes)
  keep = _rows(d, n, name)
  # Padding rows may hold anything (NaN included): zero them before the value check,
  # so that errors still give the row's index in the caller's array.
  boxes = np.where(keep[:, None], boxes.astype(np.float64), 0.0)
  out = {"boxes": check_boxes(boxes, f"{name}['boxes']")[keep]}
  labels = np.asarray(d["labels"])
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}['labels']: expected [{n}] int, got {labels.shape} {labels.dtype}")
  labels = labels[keep].astype(np.int64)
  hi = np.inf if num_classes is None else num_classes
  if ((labels < 0) | (labels >= hi)).any():
    raise ValueError(
      f"{name}['labels']: expected classes in [0, {hi}), got {labels.min()}..{labels.max()} "
      "(pass 'valid' or 'num' to drop padding rows)"
    )
  out["labels"] = labels
  if is_det:
    scores = np.asarray(d["scores"])
    if scores.shape != (n,) or scores.dtype.kind not in "fiu":
      raise ValueError(f"{name}['scores']: expected [{n}] float, got {scores.shape} {scores.dtype}")
    out["scores"] = scores[keep].astype(np.float64)
    if not np.isfinite(out["scores"]).all():
      raise ValueError(f"{name}['scores']: expected finite scores, got {out['scores'].tolist()}")
  else:
    for key in ("difficult", "crowd"):
      flag = np.asarray(d.get(key, np.zeros((n,), bool)))
      if flag.shape != (n,) or flag.dtype.kind not in "bui":
        raise ValueError(f"{name}[{key!r}]: expected [{n}] bool, got {flag.shape} {flag.dtype}")
      out[key] = flag[keep] != 0
  has = "masks" in d or "instance_masks" in d
  if masks == "need" and not has:
    raise ValueError(f"{name}: iou_type 'segm' needs 'masks' [N, H, W], got keys {sorted(d)}")
  if has and (masks == "need" or (masks == "area" and not is_det)):
    out["masks"] = _masks(d, keep, name)
  return out


def _check_args(fn: str, iou_type: str, iou_threshold: float):
  if iou_type not in ("bbox", "segm"):
    raise ValueError(f"{fn}: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
  if not 0 < iou_threshold <= 1:
    raise ValueError(f"{fn}: iou_threshold must be in (0, 1], got {iou_threshold!r}")


def _parse(detections, ground_truths, fn: str, *, masks: str, num_classes=None):
  """Both inputs -> equal-length lists of `_image` dicts; masks: "need", "area" or "no"."""
  lists = []
  for what, x in (("detections", detections), ("ground_truths", ground_truths)):
    if isinstance(x, Mapping):
      x = unbatch(x)
    if not isinstance(x, Sequence):
      raise ValueError(f"{fn}: {what} must be a list of per-image dicts, got {type(x).__name__}")
    lists.append(x)
  if len(lists[0]) != len(lists[1]) or not lists[0]:
    raise ValueError(
      f"{fn}: detections and ground_truths must hold the same number (> 0) of images, "
      f"got {len(lists[0])} and {len(lists[1])}"
    )
  dets, gts = [], []
  for i, (d, g) in enumerate(zip(*lists)):
    kw = {"masks": masks, "num_classes": num_classes}
    dets.append(_image(d, f"{fn}: detections[{i}]", is_det=True, **kw))
    gts.append(_image(g, f"{fn}: ground_truths[{i}]", is_det=False, **kw))
    if masks == "need" and dets[-1]["masks"].shape[1:] != gts[-1]["masks"].shape[1:]:
      raise ValueError(
        f"{fn}: detections[{i}]['masks'] must be [D, H, W] with the ground truth's H, W = "
        f"{gts[-1]['masks'].shape[1:]}, got {dets[-1]['masks'].shape[1:]}"
      )
  return dets, gts


def voc_ap(recall, precision, *, use_07_metric: bool) -> float:
  """Average precision of one class's curve, as the VOC devkit's `voc_ap`.

  recall, precision: [N] float, the cumulative values over detections by decreasing
  score (recall non-decreasing); N = 0 gives 0. use_07_metric True: the VOC2007 mean of
  the best precision at recall >= t for the 11 t of `np.arange(0, 1.1, 0.1)`, the devkit's
  thresholds (so 0.30000000000000004, and a recall of exactly 0.3 misses that point).
  False: the area under the precision envelope (VOC2010 and later).
  """
  recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
  if recall.ndim != 1 or recall.shape != precision.shape:
    raise ValueError(
      f"voc_ap: recall and precision must be [N] of one length, got {recall.shape} and "
      f"{precision.shape}"
    )
  if not (np.isfinite(recall).all() and np.isfinite(precision).all()):
    raise ValueError("voc_ap: recall and precision must be finite, got NaN or infinity")
  if (np.diff(recall) < 0).any():
    raise ValueError(f"voc_ap: recall must be non-decreasing, got {recall.tolist()}")
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      p = precision[recall >= t]
      ap += (p.max() if p.size else 0.0) / 11.0  # summed in the devkit's order
    return float(ap)
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope: best precision to the right
  i = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a: [D, H, W], b: [G, H, W] bool, D, G > 0 -> [D, G] IoU (0 where both are empty)."""
  a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  # float32 counts are exact up to 2**24 pixels; bigger images count in float64.
  dtype = np.float32 if a.shape[1] < 2**24 else np.float64
  bf = b.astype(dtype)
  # Detections in chunks, so that the float copy stays small for large images.
  inter = np.concatenate([a[s : s + 16].astype(dtype) @ bf.T for s in range(0, len(a), 16)])
  inter = inter.astype(np.float64)
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _overlaps(d: dict, g: dict, iou_type: str) -> np.ndarray:
  """[D, G] IoU of an image's detections with its objects of the same class, -1 across."""
  same = d["labels"][:, None] == g["labels"][None, :]
  if iou_type == "bbox":
    ov = np.nan_to_num(iou_numpy(d["boxes"], g["boxes"]))  # 0 / 0 of two empty boxes -> 0
  else:
    # Masks by class: the products cost pixels x pairs, most of them across classes.
    ov = np.zeros(same.shape)
    for c in np.intersect1d(d["labels"], g["labels"]):
      di, gi = np.flatnonzero(d["labels"] == c), np.flatnonzero(g["labels"] == c)
      ov[np.ix_(di, gi)] = _mask_iou(d["masks"][di], g["masks"][gi])
  return np.where(same, ov, -1.0)


def _voc_curves(dets, gts, num_classes: int, iou_threshold: float, iou_type: str):
  """Per class the true-positive flags [N_c] bool of its counted detections by decreasing
  score, and the non-ignored objects [num_classes] int."""
  npos = np.zeros((num_classes,), np.int64)
  found = []
  for d, g in zip(dets, gts):
    ignored = g["difficult"] | g["crowd"]
    np.add.at(npos, g["labels"][~ignored], 1)
    # Stable, like the final sort: equal scores go by image, then by detection index.
    d = {k: v[np.argsort(-d["scores"], kind="stable")] for k, v in d.items()}
    tp, counted = np.zeros((len(d["labels"]),), bool), np.ones((len(d["labels"]),), bool)
    if len(g["labels"]) and len(d["labels"]):
      ov = _overlaps(d, g, iou_type)
      # The devkit's rule: the most-overlapping object of the class (difficult ones
      # included) decides, even when it is taken and another one would match.
      best = ov.argmax(1)
      taken = np.zeros((len(g["labels"]),), bool)
      # >= as VOCevaldet.m and COCO (the devkit's Python port has >).
      for k in np.flatnonzero(ov[np.arange(len(best)), best] >= iou_threshold):
        if ignored[best[k]]:
          counted[k] = False  # neither true nor false positive
        elif not taken[best[k]]:
          tp[k] = taken[best[k]] = True
    found.append((d["labels"][counted], d["scores"][counted], tp[counted]))
  labels, scores, tp = (np.concatenate(x) for x in zip(*found))
  order = np.argsort(-scores, kind="stable")
  labels, tp = labels[order], tp[order]
  return [tp[labels == c] for c in range(num_classes)], npos


def _voc_ap_per_class(curves, npos, use_07_metric: bool) -> np.ndarray:
  ap = np.full((len(npos),), np.nan)
  for c, tp in enumerate(curves):
    if npos[c]:
      ctp = np.cumsum(tp)
      # Ignored detections were dropped from the curve: the devkit keeps them as points
      # that repeat their neighbours' recall and precision, which changes neither AP.
      ap[c] = voc_ap(ctp / npos[c], ctp / np.arange(1, len(tp) + 1), use_07_metric=use_07_metric)
  return ap


def _mean(ap: np.ndarray) -> float:
  return float(np.mean(ap[~np.isnan(ap)])) if (~np.isnan(ap)).any() else float("nan")


def evaluate_voc(
  detections, ground_truths, *, num_classes, iou_threshold=0.5, use_07_metric=False, iou_type="bbox"
) -> dict:
  """PASCAL VOC mean average precision (format of the inputs: the module docstring).

  Per class, detections of all images by decreasing score are true positives (IoU >=
  iou_threshold with the most-overlapping object of that class, not yet taken), false
  positives, or ignored (that object is difficult or crowd); AP as `voc_ap`. iou_type
  "segm" uses mask IoU ("masks" needed on both sides).
  Returns {"mAP": float, the mean over classes with ground truth (NaN if none has),
  "AP_per_class": [num_classes] float, NaN for classes without non-ignored ground truth,
  "num_positives": [num_classes] int, their non-ignored ground truth objects}.
  """
  _check_args("evaluate_voc", iou_type, iou_threshold)
  masks = "need" if iou_type == "segm" else "no"
  dets, gts = _parse(
    detections, ground_truths, "evaluate_voc", masks=masks, num_classes=num_classes
  )
  curves, npos = _voc_curves(dets, gts, num_classes, iou_threshold, iou_type)
  ap = _voc_ap_per_class(curves, npos, use_07_metric)
  return {"mAP": _mean(ap), "AP_per_class": ap, "num_positives": npos}


def _rles(masks: np.ndarray) -> list:
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel

  if not len(masks):
    return []
  return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def _coco(dets, gts, iou_type: str, class_names, verbose: bool) -> dict:
  """COCOeval on in-memory COCO objects -> {COCO_KEYS..., "AP_per_class"}."""
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel

  images, gt_anns, dt_anns = [], [], []
  xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]
  for i, (d, g) in enumerate(zip(dets, gts), start=1):
    images.append({"id": i})
    rles = _rles(g["masks"]) if "masks" in g else None
    if rles is not None:
      images[-1].update(height=g["masks"].shape[1], width=g["masks"].shape[2])
    for k, box in enumerate(g["boxes"].tolist()):
      ann = {"id": len(gt_anns) + 1, "image_id": i, "category_id": int(g["labels"][k])}
      ann.update(bbox=xywh(box), iscrowd=int(g["crowd"][k] or g["difficult"][k]))
      ann["area"] = ann["bbox"][2] * ann["bbox"][3]
      if rles is not None:  # as in COCO's json, the area (small/medium/large) is the mask's
        ann.update(segmentation=rles[k], area=float(g["masks"][k].sum()))
      gt_anns.append(ann)
    rles = _rles(d["masks"]) if iou_type == "segm" else None
    for k, box in enumerate(d["boxes"].tolist()):
      ann = {"image_id": i, "category_id": int(d["labels"][k]), "score": float(d["scores"][k])}
      ann.update({"bbox": xywh(box)} if rles is None else {"segmentation": rles[k]})
      dt_anns.append(ann)
  if class_names is None:
    ids = sorted({a["category_id"] for a in gt_anns + dt_anns})
    class_names = {c: str(c) for c in ids}
  else:
    class_names = dict(enumerate(class_names))
  if not class_names:
    # No classes at all: COCOeval would stop at accumulate; -1 is its "no ground truth".
    return dict.fromkeys(COCO_KEYS, -1.0) | {"AP_per_class": np.full((0,), -1.0)}
  dataset = {"images": images, "categories": [{"id": c, "name": n} for c, n in class_names.items()]}
  quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
  with quiet:
    gt = COCO()
    gt.dataset = dataset | {"annotations": gt_anns}
    gt.createIndex()
    if dt_anns:
      dt = gt.loadRes(dt_anns)
    else:
      # loadRes fails on an empty list (it reads anns[0]); an empty result set gives
      # COCOeval's own answer: 0 where there is ground truth, -1 where there is none.
      dt = COCO()
      dt.dataset = dataset | {"annotations": []}
      dt.createIndex()
    ev = COCOeval(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  per_class = np.full((max(class_names) + 1,), -1.0)
  for k, c in enumerate(ev.params.catIds):
    p = ev.eval["precision"][:, :, k, 0, -1]  # all IoUs and recalls, area "all", 100 dets
    per_class[c] = np.mean(p[p > -1]) if (p > -1).any() else -1.0
  return {key: float(v) for key, v in zip(COCO_KEYS, ev.stats)} | {"AP_per_class": per_class}


def evaluate_coco(
  detections, ground_truths, *, iou_type: str = "bbox", class_names=None, verbose: bool = False
) -> dict:
  """COCO AP and AR by pycocotools' COCOeval (format of the inputs: the module docstring).

  Builds the COCO objects in memory: images numbered 1.. in input order, category id =
  label, boxes as (x, y, w, h), masks as RLE (pycocotools.mask.encode), ground truth
  area from the mask when "masks" are given, else from the box; difficult and crowd
  objects as iscrowd=1. iou_type "segm" needs "masks" on both sides. class_names:
  optional [C] names; labels must then be in [0, C). Without it, the classes are the
  labels that occur. COCOeval's prints are silenced unless verbose.
  Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
  "ARm", "ARl": float (COCOeval.stats; -1 where no ground truth qualifies),
  "AP_per_class": [C] float (AP over IoU 0.50:0.95, -1 for classes without ground
  truth), C = len(class_names) or the largest label + 1}. No detections at all give 0
  (and -1 without ground truth), as COCOeval computes for an empty result set.
  """
  _check_args("evaluate_coco", iou_type, 0.5)
  num_classes = None if class_names is None else len(class_names)
  masks = "need" if iou_type == "segm" else "area"
  dets, gts = _parse(
    detections, ground_truths, "evaluate_coco", masks=masks, num_classes=num_classes
  )
  return _coco(dets, gts, iou_type, class_names, verbose)


def evaluate(
  detections, ground_truths, *, num_classes, masks=False, iou_threshold=0.5, class_names=None
) -> dict:
  """VOC and COCO numbers of the same detections, side by side (module docstring: why
  they differ). Inputs as `evaluate_voc`; masks True adds mask (segm) numbers.

  Returns a flat dict of floats with, for kind "box" (and "mask" when masks):
  f"{kind}_voc07_mAP" (11-point), f"{kind}_voc_mAP" (area), both at iou_threshold, and
  f"{kind}_coco_{key}" for the 12 COCO_KEYS (class_names default to "0".."C-1").
  """
  _check_args("evaluate", "bbox", iou_threshold)
  need = "need" if masks else "area"
  dets, gts = _parse(detections, ground_truths, "evaluate", masks=need, num_classes=num_classes)
  names = [str(c) for c in range(num_classes)] if class_names is None else class_names
  if len(names) != num_classes:
    raise ValueError(
      f"evaluate: class_names must hold num_classes = {num_classes}, got {len(names)}"
    )
  out = {}
  for kind, iou_type in (("box", "bbox"), ("mask", "segm"))[: 1 + bool(masks)]:
    curves, npos = _voc_curves(dets, gts, num_classes, iou_threshold, iou_type)
    out[f"{kind}_voc07_mAP"] = _mean(_voc_ap_per_class(curves, npos, True))
    out[f"{kind}_voc_mAP"] = _mean(_voc_ap_per_class(curves, npos, False))
    coco = _coco(dets, gts, iou_type, names, verbose=False)
    out.update({f"{kind}_coco_{k}": coco[k] for k in COCO_KEYS})
  return out
