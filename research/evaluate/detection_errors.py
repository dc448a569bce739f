"""Detection error analysis: where a detector's top detections go (YOLO paper, Section 4.1).

Redmon et al. (2016) compare YOLO with Fast R-CNN by the method of Hoiem, Chodpathumwan and
Dai (2012), "Diagnosing error in object detectors". For each class c, take the N_c
highest-scoring detections of class c over the whole split, N_c being the number of
(non-ignored) ground-truth objects of class c; each of them falls in exactly one category,
the first that applies:
  - correct: the object of class c that the detection overlaps most has IoU > 0.5 with it
    and no higher-scoring detection has matched it;
  - localization: IoU in (0.1, 0.5] with an object of class c, or a duplicate: IoU > 0.5
    with an object already matched by a higher-scoring detection (Hoiem et al. count
    duplicates as localization errors; VOC AP counts them as false positives);
  - similar: IoU > 0.1 with an object of a class similar to c (`similar` groups);
  - other: IoU > 0.1 with an object of any other class;
  - background: IoU <= 0.1 with every object.
The YOLO paper's Fig. 4 shows the percentages over all classes: Fast R-CNN correct 71.6%,
localization 8.6%, similar 4.3%, other 1.9%, background 13.6%; YOLO 65.5%, 19.0%, 6.75%,
4.0%, 4.75%. YOLO's main error is localization, Fast R-CNN's the background.

Matching follows `research.evaluate.detection.evaluate_voc`: detections in decreasing score
(equal scores by image, then detection index), the most-overlapping object of class c
decides, even when it is taken and another one would match (then a duplicate). Difficult
and crowd objects: a detection whose most-overlapping class-c object is such an object,
with IoU > 0.5, is left out (as VOC AP leaves it out of the curve): it is neither counted
nor does it take one of the N_c places. Such objects still count as objects otherwise: a
lower overlap with a difficult object of class c is a localization error (a false positive
for VOC AP), and overlaps with them decide similar, other and background. The thresholds
here are strict (IoU > 0.5, as the papers write it), where VOC AP matches at IoU >= 0.5.
Boxes only (no masks). Input format: the module docstring of `research.evaluate.detection`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from research.ops.boxes import iou_numpy

__all__ = ["CATEGORIES", "error_analysis", "plot_error_pies"]

CATEGORIES = ("correct", "localization", "similar", "other", "background")
# Fixed colours, one per category in CATEGORIES' order (the same in every pie).
_COLORS = ("#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#e41a1c")
_IGNORED = len(CATEGORIES)  # code of a detection left out (matched a difficult/crowd object)


def _similarity(similar, num_classes: int) -> np.ndarray:
  """`similar` groups -> [C, C] bool, True for two different classes sharing a group."""
  if isinstance(similar, str | bytes) or not isinstance(similar, Sequence):
    raise ValueError(
      f"error_analysis: similar must be a sequence of groups of class ids, got {similar!r}"
    )
  sim = np.zeros((num_classes, num_classes), bool)
  for group in similar:
    ids = np.asarray(group)
    if (
      ids.ndim != 1
      or (ids.size and not np.issubdtype(ids.dtype, np.integer))
      or ((ids < 0) | (ids >= num_classes)).any()
    ):
      raise ValueError(
        f"error_analysis: similar must hold groups (sequences) of class ids in "
        f"[0, {num_classes}), got group {group!r}"
      )
    sim[np.ix_(ids.astype(np.int64), ids.astype(np.int64))] = True  # an empty group is float
  np.fill_diagonal(sim, False)
  return sim


def _categorize(d: dict, g: dict, sim: np.ndarray, correct_iou: float, background_iou: float):
  """One image -> per detection: its category code [D] int (correct meaning "IoU above
  correct_iou with a not-ignored object", duplicates resolved later) and that object [D]."""
  n = len(d["labels"])
  code = np.full((n,), CATEGORIES.index("background"))
  best = np.full((n,), -1)
  if not n or not len(g["labels"]):
    return code, best
  ov = np.nan_to_num(iou_numpy(d["boxes"], g["boxes"]))  # 0 / 0 of two empty boxes -> 0
  same = d["labels"][:, None] == g["labels"][None, :]
  similar = sim[d["labels"]][:, g["labels"]]
  near = lambda where: np.where(where, ov, -1.0).max(1) > background_iou
  ovc = np.where(same, ov, -1.0)
  best = ovc.argmax(1)  # the first of equal overlaps, as the VOC devkit
  best_iou = ovc[np.arange(n), best]
  ignored = (g["difficult"] | g["crowd"])[best]
  # Assigned from the lowest priority up, so that the highest one that applies stays.
  code[near(~same & ~similar)] = CATEGORIES.index("other")
  code[near(similar)] = CATEGORIES.index("similar")
  code[best_iou > background_iou] = CATEGORIES.index("localization")
  code[best_iou > correct_iou] = CATEGORIES.index("correct")
  code[(best_iou > correct_iou) & ignored] = _IGNORED
  return code, best


def error_analysis(
  detections,
  ground_truths,
  num_classes: int,
  *,
  similar: Sequence[Sequence[int]] = (),
  correct_iou: float = 0.5,
  background_iou: float = 0.1,
) -> dict:
  """Hoiem et al.'s error categories of the top detections (module docstring).

  detections, ground_truths: as `research.evaluate.detection.evaluate_voc` takes them
  (per-image dicts, or batched dicts; "valid" and counts drop padding rows).
  similar: groups of class ids, e.g. [(cat, dog), (cow, horse, sheep)]; two different
  classes in one group are similar. Default: no class is similar to another.
  correct_iou, background_iou: the thresholds 0.5 and 0.1 (0 <= background < correct <= 1).
  Returns {"correct", "localization", "similar", "other", "background": float, fractions
  of all counted detections (NaN when none is counted), "per_class": {category: [C] int
  counts}, "count": int, detections counted, "num_positives": [C] int, the N_c non-ignored
  objects per class (the most detections class c can have counted)}.
  """
  # Here, not at the top: detection.py re-exports this module's functions.
  from research.evaluate import detection  # pylint: disable=import-outside-toplevel

  fn = "error_analysis"
  if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
    raise ValueError(f"{fn}: num_classes must be a positive int, got {num_classes!r}")
  if num_classes <= 0:
    raise ValueError(f"{fn}: num_classes must be a positive int, got {num_classes!r}")
  if not 0 < correct_iou <= 1:
    raise ValueError(f"{fn}: correct_iou must be in (0, 1], got {correct_iou!r}")
  if not 0 <= background_iou < correct_iou:
    raise ValueError(
      f"{fn}: background_iou must be in [0, correct_iou = {correct_iou}), got {background_iou!r}"
    )
  sim = _similarity(similar, int(num_classes))
  dets, gts = detection._parse(
    detections, ground_truths, fn, masks="no", num_classes=int(num_classes)
  )

  npos = np.zeros((num_classes,), np.int64)
  rows = []  # per image: labels, scores, category codes, matched object ids
  offset = 0  # objects numbered across images, so that a match names one object of the split
  for d, g in zip(dets, gts):
    np.add.at(npos, g["labels"][~(g["difficult"] | g["crowd"])], 1)
    code, best = _categorize(d, g, sim, correct_iou, background_iou)
    rows.append((d["labels"], d["scores"], code, best + offset))
    offset += len(g["labels"])
  labels, scores, code, obj = (np.concatenate(x) for x in zip(*rows))
  order = np.argsort(-scores, kind="stable")  # equal scores: by image, then detection index
  labels, code, obj = labels[order], code[order], obj[order]

  counts = np.zeros((len(CATEGORIES), num_classes), np.int64)
  for c in range(num_classes):
    mine = (labels == c) & (code != _IGNORED)
    cc, oc = code[mine][: npos[c]], obj[mine][: npos[c]]  # the top N_c counted
    # Of the detections above correct_iou with one object, the first (highest) is correct,
    # the later ones are duplicates: localization errors.
    hit = np.flatnonzero(cc == CATEGORIES.index("correct"))
    _, first = np.unique(oc[hit], return_index=True)
    cc[np.setdiff1d(hit, hit[first])] = CATEGORIES.index("localization")
    counts[:, c] = np.bincount(cc, minlength=len(CATEGORIES))
  total = int(counts.sum())
  fractions = {k: counts[i].sum() / total if total else np.nan for i, k in enumerate(CATEGORIES)}
  return {k: float(v) for k, v in fractions.items()} | {
    "per_class": dict(zip(CATEGORIES, counts, strict=True)),
    "count": total,
    "num_positives": npos,
  }


def _fractions(name, analysis) -> np.ndarray:
  if not isinstance(analysis, Mapping) or any(k not in analysis for k in CATEGORIES):
    keys = sorted(analysis) if isinstance(analysis, Mapping) else type(analysis).__name__
    raise ValueError(
      f"plot_error_pies: analyses[{name!r}] must be a dict with keys {CATEGORIES}, got {keys}"
    )
  values = np.asarray([analysis[k] for k in CATEGORIES], np.float64)
  if np.isnan(values).all():
    return values  # nothing counted: drawn as an empty pie
  if not (np.isfinite(values).all() and (values >= 0).all() and values.sum() > 0):
    raise ValueError(
      f"plot_error_pies: analyses[{name!r}] must hold finite fractions >= 0 with a positive "
      f"sum, got {values.tolist()}"
    )
  return values / values.sum()


def plot_error_pies(analyses: Mapping[str, Mapping], path: str, *, title: str | None = None) -> str:
  """One pie per named analysis side by side, e.g. {"YOLO": a, "Fast R-CNN": b}, saved as PNG.

  analyses: name -> an `error_analysis` result, or any dict with the five category
  fractions (e.g. a paper's numbers). Categories keep one colour and order in every pie;
  wedges print their percentage. Creates the folder of path; returns path.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel

  if not isinstance(analyses, Mapping) or not analyses:
    raise ValueError(
      f"plot_error_pies: analyses must be a non-empty dict name -> analysis, got {analyses!r}"
    )
  fractions = {name: _fractions(name, a) for name, a in analyses.items()}
  n = len(fractions)
  fig = Figure(figsize=(3.6 * n + 1.8, 4.0 + (0.3 if title else 0)))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, n, squeeze=False)[0]
  for ax, (name, f) in zip(axes, fractions.items(), strict=True):
    count = analyses[name].get("count")
    ax.set_title(str(name) if count is None else f"{name} ({count} detections)", fontsize=10)
    ax.set_aspect("equal")
    if np.isnan(f).all():
      ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
      ax.set_axis_off()
      continue
    shown = f > 0  # zero wedges would print 0.0% labels on top of each other
    ax.pie(
      f[shown],
      colors=[c for c, s in zip(_COLORS, shown, strict=True) if s],
      autopct="%.1f%%",
      pctdistance=0.75,
      startangle=90,
      counterclock=False,
      wedgeprops={"linewidth": 1, "edgecolor": "white"},
      textprops={"fontsize": 8},
    )
  handles = [Patch(color=c, label=k) for k, c in zip(CATEGORIES, _COLORS, strict=True)]
  fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
  if title:
    fig.suptitle(title)
  fig.subplots_adjust(left=0.02, right=1 - 1.6 / (3.6 * n + 1.8), wspace=0.1)
  path = os.fspath(path)
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120, format="png")
  return path
