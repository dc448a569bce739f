"""VOC AP against hand-computed curves, COCO AP/AR against pycocotools' COCOeval run directly."""

import contextlib
import io
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from research.evaluate import detection

NAN = float("nan")


def _gt(boxes, labels, **extra):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int)} | {
    k: np.asarray(v) for k, v in extra.items()
  }


def _det(boxes, scores, labels, **extra):
  return _gt(boxes, labels, scores=np.asarray(scores, float), **extra)


def _hand_case():
  """Two images, three classes; class 0 has 4 positives (g1, g2, g4, g5) and a difficult g3.

  Class 0 detections by score (image 0 holds g1 (0,0,10,10), g2 (2,0,12,10), g3 difficult):
    d1 0.9 (0,0,10,10)   IoU 1 with g1                       -> TP  tp=1 fp=0  rec 1/4 prec 1
    d2 0.8 (30,30,40,40) on difficult g3                     -> ignored (dropped from the curve)
    d3 0.7 (0,0,11,10)   IoU 100/110 = .91 with g1 (taken), 90/120 = .75 with g2
                         VOC takes the most-overlapping g1   -> FP  tp=1 fp=1  rec 1/4 prec 1/2
    d4 0.6 image 1 (0,0,20,20) = g4                          -> TP  tp=2 fp=1  rec 2/4 prec 2/3
    d5 0.5 image 1 (100,100,110,110), nothing there          -> FP  tp=2 fp=2  rec 2/4 prec 1/2
    d6 0.4 image 1 (50,50,70,68), IoU 360/400 = .9 with g5   -> TP  tp=3 fp=2  rec 3/4 prec 3/5
  VOC07, the best precision at recall >= t: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3;
    t = .6, .7 -> 3/5; t = .8, .9, 1 -> 0.
    AP = (3 * 1 + 3 * 2/3 + 2 * 3/5) / 11 = (3 + 2 + 1.2) / 11 = 6.2 / 11 = 31/55.
  Area: envelope 1 on (0, 1/4], 2/3 on (1/4, 2/4], 3/5 on (2/4, 3/4], 0 after:
    AP = (1 + 2/3 + 3/5) / 4 = (15 + 10 + 9) / 60 = 17/30.
  Class 1: one detection (on g2, score .95, which must not match across classes) and no
  ground truth -> NaN, left out of the mean. Class 2: one object, no detection -> AP 0.
  mAP = (31/55 + 0) / 2 = 31/110 (VOC07) and (17/30 + 0) / 2 = 17/60 (area).
  """
  gts = [
    _gt([[0, 0, 10, 10], [2, 0, 12, 10], [30, 30, 40, 40]], [0, 0, 0], difficult=[0, 0, 1]),
    _gt([[0, 0, 20, 20], [50, 50, 70, 70], [80, 0, 100, 30]], [0, 0, 2], difficult=[0, 0, 0]),
  ]
  dets = [
    _det(
      [[0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 11, 10], [2, 0, 12, 10]],
      [0.9, 0.8, 0.7, 0.95],
      [0, 0, 0, 1],
    ),
    _det([[0, 0, 20, 20], [100, 100, 110, 110], [50, 50, 70, 68]], [0.6, 0.5, 0.4], [0, 0, 0]),
  ]
  return dets, gts


def _with_masks(images, size=128):
  """Rectangular masks of the (integer) boxes: their mask IoU equals the box IoU exactly."""
  out = []
  for im in images:
    masks = np.zeros((len(im["boxes"]), size, size), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, im["boxes"].astype(int)):
      m[y1:y2, x1:x2] = 1
    out.append(im | {"masks": masks})
  return out


def test_voc_ap_hand_computed_curve():
  rec, prec = [0.25, 0.25, 0.5, 0.5, 0.75], [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5]
  assert detection.voc_ap(rec, prec, use_07_metric=True) == pytest.approx(31 / 55, abs=1e-12)
  assert detection.voc_ap(rec, prec, use_07_metric=False) == pytest.approx(17 / 30, abs=1e-12)
  # No detections: an empty curve.
  assert detection.voc_ap([], [], use_07_metric=True) == 0.0
  assert detection.voc_ap([], [], use_07_metric=False) == 0.0
  # The devkit's thresholds come from np.arange: its 4th is 0.30000000000000004, so a
  # recall of exactly 0.3 counts at t = 0, .1, .2 only (3/11), while the area is 0.3.
  assert detection.voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(3 / 11, abs=1e-12)
  assert detection.voc_ap([0.3], [1.0], use_07_metric=False) == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluate_voc_hand_case(iou_type):
  dets, gts = _hand_case()
  if iou_type == "segm":
    dets, gts = _with_masks(dets), _with_masks(gts)
  kw = {"num_classes": 3, "iou_type": iou_type}
  voc07 = detection.evaluate_voc(dets, gts, use_07_metric=True, **kw)
  area = detection.evaluate_voc(dets, gts, use_07_metric=False, **kw)
  np.testing.assert_allclose(voc07["AP_per_class"], [31 / 55, NAN, 0.0], atol=1e-12)
  np.testing.assert_allclose(area["AP_per_class"], [17 / 30, NAN, 0.0], atol=1e-12)
  assert voc07["mAP"] == pytest.approx(31 / 110, abs=1e-12)
  assert area["mAP"] == pytest.approx(17 / 60, abs=1e-12)
  np.testing.assert_array_equal(area["num_positives"], [4, 0, 1])


def test_difficult_and_crowd_are_neither_true_nor_false_positives():
  # Detections by score: .9 on a difficult object, .8 on nothing, .7 on a normal object.
  gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[1, 0])]
  dets = [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
  run = lambda g: detection.evaluate_voc(dets, g, num_classes=1)
  # Ignored: one positive; FP (.8) then TP (.7): precision 1/2 at recall 1 -> AP 1/2.
  assert run(gts)["mAP"] == 0.5 and run(gts)["num_positives"].tolist() == [1]
  crowd = [gts[0] | {"difficult": np.zeros(2, bool), "crowd": np.array([True, False])}]
  assert run(crowd)["mAP"] == 0.5
  # Counted as an object: TP, FP, TP -> recall 1/2 at precision 1, recall 1 at precision
  # 2/3 -> area 1/2 * 1 + 1/2 * 2/3 = 5/6.
  plain = [{k: v for k, v in gts[0].items() if k != "difficult"}]
  assert run(plain)["mAP"] == pytest.approx(5 / 6, abs=1e-12)


def test_voc_match_at_exactly_the_threshold():
  # IoU (0,0,10,10) with (0,0,20,10) is 100 / 200 = 0.5: a match, as in VOCevaldet.m
  # (ovmax >= minoverlap) and COCO; the Python port's `>` would make it a false positive.
  gts = [_gt([[0, 0, 20, 10]], [0])]
  dets = [_det([[0, 0, 10, 10]], [0.5], [0])]
  assert detection.evaluate_voc(dets, gts, num_classes=1)["mAP"] == 1.0
  assert detection.evaluate_voc(dets, gts, num_classes=1, iou_threshold=0.51)["mAP"] == 0.0


def test_padded_batched_input_equals_per_image():
  """Model outputs padded to fixed sizes, with NaN and -1 in the padding rows."""
  dets, gts = _hand_case()

  def pad(images, rows, count_key):
    batch = {}
    for key in images[0]:
      stacked = []
      for im in images:
        a = im[key]
        fill = -1 if key == "labels" else (np.nan if key == "boxes" else 0)
        stacked.append(np.concatenate([a, np.full((rows - len(a),) + a.shape[1:], fill, a.dtype)]))
      batch[key] = np.stack(stacked)
    batch[count_key] = np.array([len(im["labels"]) for im in images])
    return batch

  # Detections as a jitted model returns them: jax arrays (float32 boxes, int32 labels).
  det_batch = {k: jnp.asarray(v) for k, v in pad(dets, 6, "num_detections").items()}
  gt_batch = pad(gts, 5, "num_objects")
  expected = detection.evaluate_voc(dets, gts, num_classes=3)
  got = detection.evaluate_voc(det_batch, gt_batch, num_classes=3)
  np.testing.assert_array_equal(got["AP_per_class"], expected["AP_per_class"])
  # "valid" instead of counts, and an extra padded image dropped by unbatch(keep=...).
  det_batch = {k: np.asarray(v) for k, v in det_batch.items()}
  det_batch["valid"] = np.arange(6)[None] < det_batch.pop("num_detections")[:, None]
  three = {k: np.concatenate([v, v[:1]]) for k, v in det_batch.items()}
  gt3 = {k: np.concatenate([v, v[:1]]) for k, v in gt_batch.items()}
  keep = np.array([True, True, False])
  got = detection.evaluate_voc(
    detection.unbatch(three, keep), detection.unbatch(gt3, keep), num_classes=3
  )
  np.testing.assert_array_equal(got["AP_per_class"], expected["AP_per_class"])


def _random_scenes(seed, *, images=8, classes=3, size=128, masks=False):
  """Random ground truth and detections (jittered objects, false positives, one image with
  > 100 detections of a class, an image without objects, one without detections)."""
  rng = np.random.default_rng(seed)
  dets, gts = [], []
  for i in range(images):
    g = 0 if i == 2 else int(rng.integers(1, 7))
    xy = rng.integers(0, size - 10, (g, 2))
    wh = rng.integers(3, 110, (g, 2))
    gb = np.concatenate([xy, np.minimum(xy + wh, size)], 1).astype(float)
    gl = rng.integers(0, classes, g)
    gt = {"boxes": gb, "labels": gl, "crowd": rng.random(g) < 0.1}
    gt["difficult"] = rng.random(g) < 0.1
    hit = rng.random(g) < 0.8
    jitter = rng.normal(0, 0.08, (hit.sum(), 4)) * np.tile(gb[hit, 2:] - gb[hit, :2], 2)
    n_fp = 150 if i == 3 else int(rng.integers(0, 5))
    xy = rng.integers(0, size - 10, (n_fp, 2))
    fp = np.concatenate([xy, np.minimum(xy + rng.integers(3, 60, (n_fp, 2)), size)], 1)
    db = np.concatenate([gb[hit] + jitter, fp]).round().clip(0, size)
    db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
    # Image 3's false positives all in class 0: over COCO's 100 per image and class.
    dl = np.concatenate([gl[hit], rng.integers(0, 1 if i == 3 else classes, n_fp)])
    if i == 5:
      db, dl = db[:0], dl[:0]
    det = {"boxes": db, "labels": dl, "scores": rng.random(len(db))}
    if masks:
      for im, noise in ((gt, 0.15), (det, 0.3)):
        m = np.zeros((len(im["boxes"]), size, size), bool)
        for k, (x1, y1, x2, y2) in enumerate(im["boxes"].astype(int)):
          m[k, y1:y2, x1:x2] = rng.random((y2 - y1, x2 - x1)) > noise
        im["masks"] = m
    dets.append(det)
    gts.append(gt)
  return dets, gts


def _devkit_voc_eval(dets, gts, c, use_07_metric, ovthresh=0.5):
  """py-faster-rcnn's lib/datasets/voc_eval.py for class c, transcribed; the changes:
  continuous boxes (no +1), `ovmax >= ovthresh` as VOCevaldet.m, crowd as difficult,
  a stable sort (the port's quicksort orders equal scores arbitrarily)."""
  class_recs, npos = {}, 0
  for i, g in enumerate(gts):
    R = g["labels"] == c
    difficult = (g["difficult"] | g["crowd"])[R]
    npos += int((~difficult).sum())
    class_recs[i] = {"bbox": g["boxes"][R], "difficult": difficult, "det": [False] * R.sum()}
  image_ids, confidence, BB = [], [], []
  for i, d in enumerate(dets):
    m = d["labels"] == c
    image_ids += [i] * int(m.sum())
    confidence += d["scores"][m].tolist()
    BB += d["boxes"][m].tolist()
  sorted_ind = np.argsort(-np.array(confidence), kind="stable")
  BB = np.array(BB).reshape(-1, 4)[sorted_ind]
  image_ids = [image_ids[x] for x in sorted_ind]
  nd = len(image_ids)
  tp, fp = np.zeros(nd), np.zeros(nd)
  for d in range(nd):
    R, bb, ovmax = class_recs[image_ids[d]], BB[d], -np.inf
    BBGT = R["bbox"]
    if BBGT.size > 0:
      iw = np.maximum(np.minimum(BBGT[:, 2], bb[2]) - np.maximum(BBGT[:, 0], bb[0]), 0.0)
      ih = np.maximum(np.minimum(BBGT[:, 3], bb[3]) - np.maximum(BBGT[:, 1], bb[1]), 0.0)
      inters = iw * ih
      uni = (
        (bb[2] - bb[0]) * (bb[3] - bb[1])
        + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1])
        - inters
      )
      overlaps = inters / uni
      ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
    if ovmax >= ovthresh:
      if not R["difficult"][jmax]:
        if not R["det"][jmax]:
          tp[d], R["det"][jmax] = 1.0, True
        else:
          fp[d] = 1.0
    else:
      fp[d] = 1.0
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07_metric:  # the port's voc_ap, loops and all
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
      ap = ap + p / 11.0
    return ap
  mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_equals_devkit_transcription(seed):
  """Random scenes (difficult, crowd, duplicates, empty images): AP per class as the devkit's."""
  dets, gts = _random_scenes(seed, classes=4)
  for use_07 in (True, False):
    got = detection.evaluate_voc(dets, gts, num_classes=4, use_07_metric=use_07)
    for c in range(4):
      if got["num_positives"][c]:
        assert got["AP_per_class"][c] == _devkit_voc_eval(dets, gts, c, use_07)
      else:
        assert np.isnan(got["AP_per_class"][c])
    assert 0 < got["mAP"] < 1


def _cocoeval_directly(tmp_path, dets, gts, iou_type, classes):
  """COCOeval.stats of a COCO json written here, independently of the library."""
  from pycocotools import mask as mask_utils
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  def rle(m):
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}

  images, anns, results = [], [], []
  for i, (d, g) in enumerate(zip(dets, gts)):
    image_id = 100 + i
    images.append({"id": image_id, "height": 128, "width": 128, "file_name": f"{i}.png"})
    for k in range(len(g["labels"])):
      x1, y1, x2, y2 = (float(v) for v in g["boxes"][k])
      ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(g["labels"][k])}
      ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
      ann["iscrowd"] = int(g["crowd"][k] or g["difficult"][k])
      ann["area"] = (x2 - x1) * (y2 - y1)
      if "masks" in g:
        ann["segmentation"], ann["area"] = rle(g["masks"][k]), float(g["masks"][k].sum())
      anns.append(ann)
    for k in range(len(d["labels"])):
      x1, y1, x2, y2 = (float(v) for v in d["boxes"][k])
      r = {"image_id": image_id, "category_id": int(d["labels"][k]), "score": float(d["scores"][k])}
      if iou_type == "segm":
        r["segmentation"] = rle(d["masks"][k])
      else:
        r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
      results.append(r)
  categories = [{"id": c, "name": f"class {c}"} for c in range(classes)]
  gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
  gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
  res_file.write_text(json.dumps(results))
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO(str(gt_file))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return dict(zip(detection.COCO_KEYS, ev.stats.tolist()))


@pytest.mark.parametrize(
  "iou_type, masks",
  [("bbox", False), ("bbox", True), ("segm", True)],
  ids=["box", "box-maskarea", "segm"],
)
def test_coco_equals_cocoeval_directly(tmp_path, iou_type, masks):
  pytest.importorskip("pycocotools")
  dets, gts = _random_scenes(0, masks=masks)
  expected = _cocoeval_directly(tmp_path, dets, gts, iou_type, 3)
  got = detection.evaluate_coco(dets, gts, iou_type=iou_type, class_names=["a", "b", "c"])
  assert {k: got[k] for k in detection.COCO_KEYS} == expected
  # Neither empty nor trivial: the numbers lie strictly between 0 and 1.
  assert all(0 < expected[k] < 1 for k in ("AP", "AP50", "AR100"))
  assert got["AP_per_class"].shape == (3,) and (got["AP_per_class"] > 0).all()
  # Without class_names the classes are the labels that occur: the same three here.
  plain = detection.evaluate_coco(dets, gts, iou_type=iou_type)
  assert {k: plain[k] for k in detection.COCO_KEYS} == expected


def test_no_detections():
  pytest.importorskip("pycocotools")
  # Two medium objects (area 40 * 40 between 32^2 and 96^2), one image without any.
  gts = [_gt([[0, 0, 40, 40], [50, 50, 90, 90]], [0, 1]), _gt([], [])]
  dets = [_det([], [], []), _det([], [], [])]
  voc = detection.evaluate_voc(dets, gts, num_classes=3)
  np.testing.assert_array_equal(voc["AP_per_class"], [0.0, 0.0, NAN])
  assert voc["mAP"] == 0.0
  coco = detection.evaluate_coco(dets, gts, class_names=["a", "b", "c"])
  # COCOeval's answer for an empty result set: 0 where objects are, -1 for the empty
  # small and large ranges (as its accumulate leaves them).
  expected = dict.fromkeys(detection.COCO_KEYS, 0.0) | dict.fromkeys(
    ["APs", "APl", "ARs", "ARl"], -1.0
  )
  assert {k: coco[k] for k in detection.COCO_KEYS} == expected
  np.testing.assert_array_equal(coco["AP_per_class"], [0.0, 0.0, -1.0])


def test_no_objects():
  pytest.importorskip("pycocotools")
  gts = [_gt([], []), _gt([], [])]
  dets = [_det([[0, 0, 10, 10]], [0.5], [1]), _det([], [], [])]
  voc = detection.evaluate_voc(dets, gts, num_classes=2)
  assert math.isnan(voc["mAP"]) and np.isnan(voc["AP_per_class"]).all()
  all_missing = dict.fromkeys(detection.COCO_KEYS, -1.0)
  for names in (None, ["a", "b"]):
    coco = detection.evaluate_coco(dets, gts, class_names=names)
    assert {k: coco[k] for k in detection.COCO_KEYS} == all_missing
  # Nothing at all, without class names: no classes, still COCO's -1.
  coco = detection.evaluate_coco([_det([], [], [])], [_gt([], [])])
  assert {k: coco[k] for k in detection.COCO_KEYS} == all_missing
  side = detection.evaluate(dets, gts, num_classes=2)
  assert math.isnan(side["box_voc_mAP"]) and side["box_coco_AP"] == -1.0


def test_evaluate_side_by_side():
  pytest.importorskip("pycocotools")
  dets, gts = _random_scenes(1, images=4, masks=True)
  out = detection.evaluate(dets, gts, num_classes=3, masks=True)
  for kind, iou_type in (("box", "bbox"), ("mask", "segm")):
    for use_07, key in ((True, "voc07_mAP"), (False, "voc_mAP")):
      voc = detection.evaluate_voc(
        dets, gts, num_classes=3, use_07_metric=use_07, iou_type=iou_type
      )
      assert out[f"{kind}_{key}"] == voc["mAP"]
    coco = detection.evaluate_coco(dets, gts, iou_type=iou_type, class_names=["0", "1", "2"])
    assert {k: out[f"{kind}_coco_{k}"] for k in detection.COCO_KEYS} == {
      k: coco[k] for k in detection.COCO_KEYS
    }
  assert set(detection.evaluate(dets, gts, num_classes=3)) == {
    k for k in out if k.startswith("box_")
  }


def _bad(case):
  dets, gts = _hand_case()
  if case == "nan box":
    gts[1]["boxes"][2, 1] = np.nan
    return dets, gts, r"ground_truths\[1\]\['boxes'\]: expected xyxy boxes with finite .* at box 2"
  if case == "box shape":
    dets[0]["boxes"] = np.zeros((4, 5))
    return dets, gts, r"detections\[0\]\['boxes'\]: expected \[N, 4\] .*got \(4, 5\)"
  if case == "x2 < x1":
    dets[1]["boxes"][0] = [10, 0, 5, 5]
    return dets, gts, r"detections\[1\]\['boxes'\]: expected .*x1 <= x2"
  if case == "nan score":
    dets[0]["scores"][1] = np.nan
    return dets, gts, r"detections\[0\]\['scores'\]: expected finite"
  if case == "score shape":
    dets[0]["scores"] = dets[0]["scores"][:2]
    return dets, gts, r"detections\[0\]\['scores'\]: expected \[4\] float, got \(2,\)"
  if case == "float labels":
    gts[0]["labels"] = gts[0]["labels"].astype(float)
    return dets, gts, r"ground_truths\[0\]\['labels'\]: expected \[3\] int, got \(3,\) float64"
  if case == "label range":
    gts[1]["labels"][2] = 3
    return dets, gts, r"ground_truths\[1\]\['labels'\]: expected classes in \[0, 3\), got 0..3"
  if case == "missing scores":
    del dets[1]["scores"]
    return dets, gts, r"detections\[1\]: expected keys .* missing \['scores'\]"
  if case == "image count":
    return dets, gts[:1], r"same number .* got 2 and 1"
  if case == "valid shape":
    gts[0]["valid"] = np.ones(2, bool)
    return dets, gts, r"ground_truths\[0\]\['valid'\]: expected \[3\] bool, got \(2,\)"
  if case == "num range":
    dets[0]["num_detections"] = 7
    return dets, gts, r"detections\[0\]\['num_detections'\]: expected an int in \[0, 4\], got 7"
  raise AssertionError(case)


@pytest.mark.parametrize(
  "case",
  [
    "nan box",
    "box shape",
    "x2 < x1",
    "nan score",
    "score shape",
    "float labels",
    "label range",
    "missing scores",
    "image count",
    "valid shape",
    "num range",
  ],
)
def test_bad_input_names_argument(case):
  dets, gts, message = _bad(case)
  with pytest.raises(ValueError, match=message):
    detection.evaluate_voc(dets, gts, num_classes=3)


def test_bad_masks_and_arguments():
  dets, gts = _hand_case()
  with pytest.raises(ValueError, match=r"detections\[0\]: iou_type 'segm' needs 'masks'"):
    detection.evaluate_voc(dets, gts, num_classes=3, iou_type="segm")
  dets, gts = _with_masks(dets), _with_masks(gts)
  floats = [dets[0] | {"masks": dets[0]["masks"].astype(np.float32)}, dets[1]]
  with pytest.raises(ValueError, match=r"detections\[0\]\['masks'\]: expected \[4, H, W\] bool"):
    detection.evaluate_voc(floats, gts, num_classes=3, iou_type="segm")
  small = [dets[0], dets[1] | {"masks": dets[1]["masks"][:, :64]}]
  with pytest.raises(ValueError, match=r"H, W = \(128, 128\), got \(64, 128\)"):
    detection.evaluate_voc(small, gts, num_classes=3, iou_type="segm")
  with pytest.raises(ValueError, match="iou_type must be 'bbox' or 'segm', got 'keypoints'"):
    detection.evaluate_coco(dets, gts, iou_type="keypoints")
  with pytest.raises(ValueError, match="class_names must hold num_classes = 3, got 2"):
    detection.evaluate(dets, gts, num_classes=3, class_names=["a", "b"])
  with pytest.raises(ValueError, match="recall must be non-decreasing"):
    detection.voc_ap([0.5, 0.25], [1, 1], use_07_metric=False)
  with pytest.raises(ValueError, match=r"one length, got \(2,\) and \(1,\)"):
    detection.voc_ap([0.5, 0.75], [1], use_07_metric=True)
