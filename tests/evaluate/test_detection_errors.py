"""Hoiem et al.'s error categories (YOLO Section 4.1) on hand-built cases and against a loop."""

import math

import matplotlib.image
import numpy as np
import pytest

from research.evaluate import detection, detection_errors
from research.evaluate.detection import error_analysis, plot_error_pies

CATS = ("correct", "localization", "similar", "other", "background")


def _gt(boxes, labels, **extra):
  return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int)} | {
    k: np.asarray(v) for k, v in extra.items()
  }


def _det(boxes, scores, labels, **extra):
  return _gt(boxes, labels, scores=np.asarray(scores, float), **extra)


def _counts(out, c=None):
  """{category: count} over all classes, or of class c."""
  return {k: int(out["per_class"][k].sum() if c is None else out["per_class"][k][c]) for k in CATS}


def _zero(**counts):
  return dict.fromkeys(CATS, 0) | counts


def test_reexported():
  assert detection.error_analysis is detection_errors.error_analysis
  assert detection.plot_error_pies is detection_errors.plot_error_pies
  assert detection_errors.CATEGORIES == CATS


def _every_category():
  """One image: class 0 has five objects (A..E), so its five detections are all counted.

  d1 0.9 on A exactly                                       -> correct
  d2 0.8 (24,0,34,10) against B (20,0,30,10): 60 / 140 = .43  -> localization
  d3 0.7 on S, an object of class 1                         -> similar (when 0 ~ 1), else other
  d4 0.6 on O, an object of class 2                         -> other
  d5 0.5 far from every object                              -> background
  """
  gts = [
    _gt(
      [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]]
      + [[100, 0, 110, 10], [200, 0, 210, 10]],
      [0, 0, 0, 0, 0, 1, 2],
    )
  ]
  dets = [
    _det(
      [[0, 0, 10, 10], [24, 0, 34, 10], [100, 0, 110, 10], [200, 0, 210, 10], [300, 300, 310, 310]],
      [0.9, 0.8, 0.7, 0.6, 0.5],
      [0, 0, 0, 0, 0],
    )
  ]
  return dets, gts


def test_every_category():
  dets, gts = _every_category()
  out = error_analysis(dets, gts, 3, similar=[(0, 1)])
  assert out["count"] == 5
  assert {k: out[k] for k in CATS} == dict.fromkeys(CATS, 0.2)
  assert _counts(out, 0) == dict.fromkeys(CATS, 1)
  assert _counts(out, 1) == _counts(out, 2) == _zero()
  np.testing.assert_array_equal(out["num_positives"], [5, 1, 1])
  for k in CATS:
    assert out["per_class"][k].shape == (3,) and out["per_class"][k].dtype == np.int64
  # Without similar groups, class 1 is just another class.
  out = error_analysis(dets, gts, 3)
  assert _counts(out) == _zero(correct=1, localization=1, other=2, background=1)
  assert out["other"] == 0.4 and out["similar"] == 0.0


def test_thresholds_are_strict_and_adjustable():
  """IoU exactly 0.5 is a localization error, exactly 0.1 is background (the papers' > .5, > .1)."""
  gts = [_gt([[0, 0, 10, 10], [50, 0, 60, 10]], [0, 0])]
  # 50 / 100 = 0.5 with the first object, 10 / 100 = 0.1 with the second.
  dets = [_det([[0, 0, 10, 5], [50, 0, 60, 1]], [0.9, 0.8], [0, 0])]
  assert _counts(error_analysis(dets, gts, 1)) == _zero(localization=1, background=1)
  out = error_analysis(dets, gts, 1, correct_iou=0.4, background_iou=0.05)
  assert _counts(out) == _zero(correct=1, localization=1)


def test_top_n_per_class():
  """One object of class 0: only the highest-scoring class-0 detection is counted."""
  gts = [_gt([[0, 0, 10, 10]], [0]), _gt([[0, 0, 10, 10]], [1])]
  dets = [
    _det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.3], [0, 0]),  # background, then correct
    _det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.2, 0.95], [1, 0]),  # correct (1), other (0)
  ]
  out = error_analysis(dets, gts, 2)
  # Class 0 by score: 0.95 (image 1, on the class-1 object) then 0.9, 0.3: only 0.95 counts.
  assert _counts(out, 0) == _zero(other=1)
  assert _counts(out, 1) == _zero(correct=1)
  assert out["count"] == 2 and out["correct"] == out["other"] == 0.5
  # With the 0.95 detection gone, the background one is the top one, not the correct one.
  dets[1] = _det([[0, 0, 10, 10]], [0.2], [1])
  assert _counts(error_analysis(dets, gts, 2), 0) == _zero(background=1)


def test_duplicates_are_localization_errors():
  """VOC's rule: the most-overlapping object decides, even when taken (then a duplicate)."""
  gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10], [100, 0, 110, 10]], [0, 0, 0])]
  dets = [
    _det(
      # A exactly; IoU 100/110 with A (taken), 90/120 with B; IoU .9 with A again.
      [[0, 0, 10, 10], [0, 0, 11, 10], [0, 0, 10, 9]],
      [0.9, 0.8, 0.7],
      [0, 0, 0],
    )
  ]
  out = error_analysis(dets, gts, 1)
  assert _counts(out) == _zero(correct=1, localization=2)
  assert out["correct"] == pytest.approx(1 / 3) and out["localization"] == pytest.approx(2 / 3)
  # The same object in two images is two objects.
  out = error_analysis(dets + [dets[0]], gts + [gts[0]], 1)
  assert _counts(out) == _zero(correct=2, localization=4)


def test_similar_groups_and_priority():
  """Classes 0 ~ 1 and 2 ~ 3 ~ 4; each detection on its own object layout in its own image."""
  far = [500, 500, 510, 510]
  cases = [
    # (objects, their labels, detection label, expected category)
    ([[0, 0, 10, 10]], [1], 0, "similar"),
    ([[0, 0, 10, 10]], [2], 0, "other"),
    ([[0, 0, 10, 10]], [4], 3, "similar"),
    ([[0, 0, 10, 10]], [0], 3, "other"),
    # 0.9 with a similar object, 0.3 with its own class: localization first.
    ([[0, 0, 10, 9], [0, 0, 10, 3]], [1, 0], 0, "localization"),
    # 0.9 with another class, 0.2 with a similar one: similar first.
    ([[0, 0, 10, 9], [0, 0, 10, 2]], [2, 1], 0, "similar"),
    # 0.1 exactly with a similar object, 0.2 with another class: other.
    ([[0, 0, 10, 1], [0, 0, 10, 2]], [1, 2], 0, "other"),
  ]
  gts, dets = [], []
  for boxes, labels, label, _ in cases:
    # One object of the detection's class far away gives N_c a place for it.
    gts.append(_gt(boxes + [far], labels + [label]))
    dets.append(_det([[0, 0, 10, 10]], [0.5], [label]))
  out = error_analysis(dets, gts, 5, similar=[[0, 1], (2, 3, 4)])
  for i, (*_, want) in enumerate(cases):
    got = error_analysis([dets[i]], [gts[i]], 5, similar=[[0, 1], (2, 3, 4)])
    assert _counts(got) == _zero(**{want: 1}), i
  assert out["count"] == len(cases)
  assert _counts(out) == _zero(similar=3, other=3, localization=1)
  # Similarity is symmetric and within groups only; a class is not "similar" to itself.
  sim = detection_errors._similarity([[0, 1], (2, 3, 4), []], 5)  # an empty group is fine
  np.testing.assert_array_equal(sim, sim.T)
  assert sim[2, 4] and not sim[1, 2] and not sim.diagonal().any()


def test_difficult_and_crowd_objects_are_left_out():
  """Class 0: A, C normal, D difficult (or crowd): N_0 = 2.

  0.9 on D exactly         -> left out: neither counted nor taking a place
  0.8 on A exactly         -> correct
  0.7 on D with IoU 0.3    -> localization (a false positive for VOC too)
  0.6 on C exactly         -> correct, but the third counted: beyond N_0, not counted
  """
  for flag in ("difficult", "crowd"):
    gts = [
      _gt([[0, 0, 10, 10], [50, 0, 60, 10]], [0, 0], **{flag: [False, True]}),
      _gt([[0, 0, 10, 10], [30, 30, 40, 40]], [0, 1], **{flag: [False, True]}),
    ]
    dets = [
      _det([[50, 0, 60, 10], [0, 0, 10, 10], [50, 0, 60, 3]], [0.9, 0.8, 0.7], [0, 0, 0]),
      _det([[0, 0, 10, 10]], [0.6], [0]),
    ]
    out = error_analysis(dets, gts, 2)
    np.testing.assert_array_equal(out["num_positives"], [2, 0])
    assert _counts(out) == _zero(correct=1, localization=1), flag
    # A detection on an ignored object of another class is still an "other" error.
    dets[1] = _det([[30, 30, 40, 40]], [0.95], [0])
    assert _counts(error_analysis(dets, gts, 2)) == _zero(other=1, correct=1), flag


def test_padded_batched_inputs():
  """Batched dicts with "valid" and counts give the unpadded lists' answer; padding may be junk."""
  dets, gts = _every_category()
  dets.append(_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.1, 0.2], [1, 1]))  # correct, duplicate
  gts.append(_gt([[0, 0, 10, 10]], [1]))
  want = error_analysis(dets, gts, 3, similar=[(0, 1)])
  k, m = 7, 9
  bd = {
    "boxes": np.full((2, k, 4), np.nan),
    "scores": np.full((2, k), np.inf),
    "labels": np.full((2, k), -1),
    "valid": np.zeros((2, k), bool),
  }
  bg = {"boxes": np.full((2, m, 4), np.nan), "labels": np.full((2, m), 99), "num_objects": [7, 1]}
  bg["difficult"] = np.ones((2, m), bool)
  for i, (d, g) in enumerate(zip(dets, gts, strict=True)):
    rows = np.arange(len(d["labels"])) * 2 % k  # scattered valid rows
    bd["boxes"][i, rows], bd["scores"][i, rows], bd["labels"][i, rows] = (
      d["boxes"],
      d["scores"],
      d["labels"],
    )
    bd["valid"][i, rows] = True
    n = len(g["labels"])
    bg["boxes"][i, :n], bg["labels"][i, :n], bg["difficult"][i, :n] = g["boxes"], g["labels"], False
  bg["num_objects"] = np.asarray(bg["num_objects"])
  got = error_analysis(bd, detection.unbatch(bg), 3, similar=[(0, 1)])
  want_counts = _zero(correct=2, localization=2, similar=1, other=1, background=1)
  assert _counts(got) == _counts(want) == want_counts
  assert _counts(got, 1) == _zero(correct=1, localization=1)  # 0.2 first, then its duplicate
  assert got["count"] == want["count"] == 7


def test_nothing_counted():
  gts = [_gt(np.zeros((0, 4)), [])]
  out = error_analysis([_det([[0, 0, 10, 10]], [0.9], [0])], gts, 2)
  assert out["count"] == 0 and all(math.isnan(out[k]) for k in CATS)
  assert _counts(out) == _zero()
  out = error_analysis([_det(np.zeros((0, 4)), [], [])], [_gt([[0, 0, 1, 1]], [1])], 2)
  assert out["count"] == 0 and math.isnan(out["correct"])


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"detections": {"boxes": np.zeros((2, 1, 4)), "scores": np.zeros((3, 1))}}, "unbatch"),
    ({"detections": "abc"}, "detections"),
    ({"detections": []}, "same number"),
    ({"detections": [{"boxes": np.zeros((1, 4)), "labels": [0]}]}, "scores"),
    ({"detections": [_det([[0, 0, 1, 1]], [0.5], [3])]}, "labels"),
    ({"detections": [_det([[0, 0, 1, 1]], [0.5], [0]) | {"boxes": np.zeros((1, 3))}]}, "boxes"),
    ({"detections": [_det([[2, 0, 1, 1]], [0.5], [0])]}, "boxes"),
    ({"ground_truths": [_gt([[0, 0, 1, 1]], [0], difficult=[[1]])]}, "difficult"),
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 2.0}, "num_classes"),
    ({"correct_iou": 0.0}, "correct_iou"),
    ({"correct_iou": 1.5}, "correct_iou"),
    ({"background_iou": 0.5}, "background_iou"),
    ({"background_iou": -0.1}, "background_iou"),
    ({"similar": "ab"}, "similar"),
    ({"similar": [(0, 3)]}, "similar"),
    ({"similar": [(0.5, 1)]}, "similar"),
    ({"similar": [0, 1]}, "similar"),
  ],
)
def test_bad_input(kwargs, match):
  args = {
    "detections": [_det([[0, 0, 1, 1]], [0.5], [0])],
    "ground_truths": [_gt([[0, 0, 1, 1]], [1])],
    "num_classes": 3,
  } | kwargs
  dets, gts, c = args.pop("detections"), args.pop("ground_truths"), args.pop("num_classes")
  with pytest.raises(ValueError, match=match):
    error_analysis(dets, gts, c, **args)


def test_plot_error_pies(tmp_path):
  dets, gts = _every_category()
  ours = error_analysis(dets, gts, 3, similar=[(0, 1)])
  paper = dict(zip(CATS, (0.655, 0.19, 0.0675, 0.04, 0.0475), strict=True))  # YOLO, Fig. 4
  empty = error_analysis([_det(np.zeros((0, 4)), [], [])], [_gt([[0, 0, 1, 1]], [0])], 1)
  one = dict.fromkeys(CATS, 0.0) | {"correct": 1.0}  # zero wedges are left out
  path = str(tmp_path / "figures" / "sub" / "errors.png")
  analyses = {"ours": ours, "YOLO (paper)": paper, "empty": empty, "one": one}
  assert plot_error_pies(analyses, path, title="Error analysis") == path
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 4 * 100
  assert plot_error_pies({"ours": ours}, tmp_path / "one.png") == str(tmp_path / "one.png")
  assert (tmp_path / "one.png").stat().st_size > 0
  for bad in ({}, {"x": {"correct": 1.0}}, {"x": paper | {"other": -1.0}}, [ours]):
    with pytest.raises(ValueError, match="analyses"):
      plot_error_pies(bad, str(tmp_path / "bad.png"))


# An independent, straightforward implementation of the definition, for the random test.


def _iou(a, b):
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(w, 0) * max(h, 0)
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _reference(dets, gts, num_classes, similar, correct_iou, background_iou):
  def is_similar(a, b):
    return a != b and any(a in group and b in group for group in similar)

  objects = []  # per image: (box, label, ignored)
  for g in gts:
    flags = np.asarray(g.get("difficult", np.zeros(len(g["labels"]), bool)))
    objects.append(
      list(zip(g["boxes"].tolist(), g["labels"].tolist(), flags.tolist(), strict=True))
    )
  all_dets = []
  for i, d in enumerate(dets):
    for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
      all_dets.append((score, i, box, label))
  all_dets.sort(key=lambda t: -t[0])  # stable: equal scores by image, then index
  counts = {k: [0] * num_classes for k in CATS}
  events = {"left_out": 0, "duplicate": 0}  # how often the rarer rules applied
  for c in range(num_classes):
    n_c = sum(1 for objs in objects for _, label, ign in objs if label == c and not ign)
    taken, n = set(), 0
    for _, i, box, label in all_dets:
      if label != c:
        continue
      if n == n_c:
        break
      best, best_iou = None, -1.0
      for j, (obox, olabel, _) in enumerate(objects[i]):
        if olabel == c and _iou(box, obox) > best_iou:
          best, best_iou = j, _iou(box, obox)
      if best_iou > correct_iou:
        if objects[i][best][2]:
          events["left_out"] += 1
          continue
        events["duplicate"] += (i, best) in taken
        cat = "localization" if (i, best) in taken else "correct"
        taken.add((i, best))
      elif best_iou > background_iou:
        cat = "localization"
      elif any(is_similar(c, ol) and _iou(box, ob) > background_iou for ob, ol, _ in objects[i]):
        cat = "similar"
      elif any(ol != c and _iou(box, ob) > background_iou for ob, ol, _ in objects[i]):
        cat = "other"
      else:
        cat = "background"
      counts[cat][c] += 1
      n += 1
  return counts, events


def _random_split(rng, num_images, num_classes):
  dets, gts = [], []
  for _ in range(num_images):
    g = int(rng.integers(0, 6))
    xy = rng.integers(0, 30, (g, 2))
    gboxes = np.concatenate([xy, xy + rng.integers(2, 15, (g, 2))], 1)
    glabels = rng.integers(0, num_classes, g)
    gts.append(_gt(gboxes, glabels, difficult=rng.random(g) < 0.2))
    n = int(rng.integers(0, 9))
    # Mostly copies of objects with their class, some jittered (overlaps of every size, ties
    # at the thresholds), some relabelled, some random boxes.
    pick = rng.integers(0, max(g, 1), n)
    src = gboxes[pick] if g else np.zeros((n, 4), int)
    labels = glabels[pick] if g else np.zeros((n,), int)
    jitter = rng.integers(-4, 5, (n, 4)) * (rng.random((n, 1)) < 0.6)  # else exact copies
    jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] - src[:, 2:] + src[:, :2] + 1)
    xy = rng.integers(0, 40, (n, 2))
    rand = rng.random((n, 1)) < 0.15
    boxes = np.where(rand, np.concatenate([xy, xy + 5], 1), src + jitter)
    labels = np.where(rng.random(n) < 0.3, rng.integers(0, num_classes, n), labels)
    scores = rng.integers(0, 6, n) / 5  # ties, broken by image then index
    dets.append(_det(boxes, scores, labels))
  return dets, gts


@pytest.mark.parametrize("seed", range(6))
def test_against_loop_reference(seed):
  rng = np.random.default_rng(seed)
  num_classes = 4
  similar = [(0, 1), (1, 2)] if seed % 2 else []
  thresholds = {"correct_iou": 0.5, "background_iou": 0.1}
  if seed >= 4:
    thresholds = {"correct_iou": 0.7, "background_iou": 0.25}
  totals = dict.fromkeys(CATS, 0) | {"left_out": 0, "duplicate": 0}
  for _ in range(16):
    dets, gts = _random_split(rng, int(rng.integers(1, 8)), num_classes)
    out = error_analysis(dets, gts, num_classes, similar=similar, **thresholds)
    want, events = _reference(dets, gts, num_classes, similar, **thresholds)
    totals["left_out"] += events["left_out"]
    totals["duplicate"] += events["duplicate"]
    for k in CATS:
      np.testing.assert_array_equal(out["per_class"][k], want[k], err_msg=k)
      totals[k] += sum(want[k])
    count = sum(sum(v) for v in want.values())
    assert out["count"] == count
    if count:
      assert sum(out[k] for k in CATS) == pytest.approx(1.0)
      assert out["localization"] == sum(want["localization"]) / count
  # The random splits exercise every category and rule.
  assert all(v > 0 for k, v in totals.items() if k != "similar" or similar), str(totals)
