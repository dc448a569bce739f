"""R-CNN (Girshick et al. 2014): regions with CNN features.

    proposals (selective search, fast mode, ~2,000 per image: research.data.proposals)
      -> each dilated to 16 pixels of context at the warped size, warped to S x S (`warp`)
      -> a classifier pretrained on classification, fine-tuned on warped regions
         (`RegionRecords`: IoU >= 0.5 with a ground-truth box is that box's class, the
         rest background; 32 of each 128 windows foreground; the task "rcnn")
      -> fc7 features (the classifier's "pre_logits") -> one linear SVM per class
         (`train_svms`: ground truth positive, IoU < 0.3 negative, hard negative mining)
      -> class-specific ridge regression of the box from pool5 features (`BoxRegressor`:
         proposals with IoU > 0.6, lambda 1000)
      -> greedy NMS per class at IoU 0.3 (`detect`)

Classes: windows are labelled 0 for background and k + 1 for the data set's class k;
detections carry the data set's 0-based labels.

Warping (Appendix A): the tight box is dilated about its centre so that, once warped to
S x S, `context` pixels of the S = 227 frame (scaled to S) lie around it, then stretched
anisotropically to S x S with bilinear sampling; outside the image the warp is `fill`
(the data set's mean colour, which the network sees as 0, as the paper pads with the mean).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from research.ops.boxes.host import batched_nms_numpy, iou_numpy

CONTEXT = 16  # pixels of context at the paper's warped size
PAPER_SIZE = 227  # AlexNet's input
BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)  # R-CNN's targets are not rescaled (Appendix C)


def dilate(boxes, *, context: float = CONTEXT, size: int = PAPER_SIZE) -> np.ndarray:
  """boxes [R, 4] (x1, y1, x2, y2) -> [R, 4] grown about their centres by size / (size - 2
  context): warped to size x size, the original box fills all but `context` pixels each side."""
  if not 0 <= 2 * context < size:
    raise ValueError(f"dilate: context must be in [0, size / 2) = [0, {size / 2}); got {context}.")
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (size / (size - 2 * context))
  return np.concatenate([centre - half, centre + half], -1)


def _taps(start, length, n_out: int, n_in: int):
  """Bilinear sampling of n_out points across [start, start + length) (pixel edges) of an
  axis of n_in pixels -> (low [R, n_out], high, frac: the two pixels and the weight of
  high, inside [R, n_out] bool: the sample lies on the image)."""
  x = start[:, None] + (np.arange(n_out) + 0.5) * (length[:, None] / n_out) - 0.5
  inside = (x >= -0.5) & (x <= n_in - 0.5)
  x = np.clip(x, 0, n_in - 1)
  low = np.minimum(np.floor(x).astype(np.int64), max(n_in - 2, 0))
  frac = (x - low).astype(np.float32)
  return low, np.minimum(low + 1, n_in - 1), frac, inside


def warp(image, boxes, size: int, *, context: float = CONTEXT, fill=0.0, chunk: int = 64):
  """R-CNN's region warp: image [H, W, C] (uint8 or float), boxes [R, 4] (x1, y1, x2, y2)
  pixel edges -> float32 [R, size, size, C]: each box dilated by `context` pixels of the
  227 frame (scaled to `size`) and stretched to size x size by bilinear sampling, `fill`
  (a scalar or [C]) where a sample falls outside the image."""
  image = np.asarray(image)
  if image.ndim != 3 or 0 in image.shape:
    raise ValueError(f"warp: image must be [H, W, C] with H, W >= 1; received {image.shape}.")
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not np.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
    raise ValueError("warp: boxes must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1.")
  if not isinstance(size, int | np.integer) or size < 1:
    raise ValueError(f"warp: size must be a positive int; received {size!r}.")
  h, w, c = image.shape
  big = dilate(boxes, context=context, size=PAPER_SIZE)
  pixels = image.astype(np.float32)
  fill = np.broadcast_to(np.asarray(fill, np.float32), (c,))
  out = np.empty((len(boxes), size, size, c), np.float32)
  for lo in range(0, len(boxes), chunk):
    b = big[lo : lo + chunk]
    y0, y1, fy, in_y = _taps(b[:, 1], b[:, 3] - b[:, 1], size, h)
    x0, x1, fx, in_x = _taps(b[:, 0], b[:, 2] - b[:, 0], size, w)
    # Four gathers of size x size pixels per window: the work grows with the windows, not
    # with the image (VOC's 600 x 1000 photographs).
    y0, y1, fy = y0[:, :, None], y1[:, :, None], fy[:, :, None, None]
    x0, x1, fx = x0[:, None, :], x1[:, None, :], fx[:, None, :, None]
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x1] * fx
    bottom = pixels[y1, x0] * (1 - fx) + pixels[y1, x1] * fx
    warped = top * (1 - fy) + bottom * fy
    outside = ~(in_y[:, :, None] & in_x[:, None, :])
    out[lo : lo + chunk] = np.where(outside[..., None], fill, warped)
  return out


def window_labels(proposals, gt_boxes, gt_labels, *, fg_iou: float = 0.5):
  """Fine-tuning labels (Section 2.3): proposals [P, 4], ground truth [G, 4] and [G] 0-based
  -> (labels [P] int: the class + 1 of the box a proposal overlaps with IoU >= fg_iou, else
  0; its IoU [P] with that box)."""
  proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
  if len(gt_boxes) == 0 or len(proposals) == 0:
    return np.zeros(len(proposals), np.int64), np.zeros(len(proposals))
  overlaps = iou_numpy(proposals, np.asarray(gt_boxes, np.float32))
  best = overlaps.argmax(1)
  iou = overlaps[np.arange(len(proposals)), best]
  labels = np.where(iou >= fg_iou, np.asarray(gt_labels)[best] + 1, 0)
  return labels.astype(np.int64), iou


@dataclasses.dataclass(frozen=True)
class Window:
  """Arrays over the windows of a split: image index [K], box [K, 4], label [K] (0: background)."""

  image: np.ndarray
  box: np.ndarray
  label: np.ndarray


def fine_tuning_windows(
  source, *, fg_iou: float = 0.5, fg_fraction: float = 0.25, seed: int = 0, progress=True
) -> Window:
  """The fine-tuning windows of `source` (detection records with "proposals"): every
  ground-truth box and every proposal with IoU >= fg_iou is foreground (its box's class + 1),
  and background windows (IoU < fg_iou) are drawn so that foreground is `fg_fraction` of
  all (the paper's 32 of 128), shuffled with `seed`."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  if not 0 < fg_fraction <= 1:
    raise ValueError(f"fine_tuning_windows: fg_fraction must be in (0, 1]; got {fg_fraction}.")
  fg, bg = [], []
  for i in tqdm(range(len(source)), desc="R-CNN windows", disable=not progress, leave=False):
    record = source[i]
    if "proposals" not in record:
      raise ValueError(
        "fine_tuning_windows: records need 'proposals' (config.proposals, "
        "research.data.proposals); received keys " + str(sorted(record))
      )
    gt_boxes, gt_labels = record["boxes"], record["labels"]
    labels, _ = window_labels(record["proposals"], gt_boxes, gt_labels, fg_iou=fg_iou)
    for box, label in zip(gt_boxes, gt_labels, strict=True):
      fg.append((i, *box, label + 1))
    for box, label in zip(record["proposals"], labels, strict=True):
      (fg if label else bg).append((i, *box, label))
  rng = np.random.default_rng(seed)
  fg, bg = np.asarray(fg, np.float64).reshape(-1, 6), np.asarray(bg, np.float64).reshape(-1, 6)
  want = len(bg) if fg_fraction == 1 else round(len(fg) * (1 - fg_fraction) / fg_fraction)
  bg = bg[rng.choice(len(bg), min(want, len(bg)), replace=False)]
  rows = np.concatenate([fg, bg])[rng.permutation(len(fg) + len(bg))]
  return Window(
    rows[:, 0].astype(np.int64), rows[:, 1:5].astype(np.float32), rows[:, 5].astype(np.int64)
  )


class RegionRecords:
  """A classification data set of warped regions: record k is {"image": uint8 [S, S, C]
  (window k warped), "label": int (0 background, class + 1)}; `detection` is the source of
  detection records (with proposals) the windows come from."""

  def __init__(
    self,
    detection,
    size: int,
    *,
    fill=0,
    seed: int = 0,
    fg_iou: float = 0.5,
    fg_fraction: float = 0.25,
    progress: bool = True,
  ):
    self.detection, self.size, self.fill = detection, size, fill
    self.windows = fine_tuning_windows(
      detection, fg_iou=fg_iou, fg_fraction=fg_fraction, seed=seed, progress=progress
    )

  def __len__(self) -> int:
    return len(self.windows.label)

  def __getitem__(self, k: int) -> dict:
    w = self.windows
    image = np.asarray(self.detection[int(w.image[k])]["image"])
    crop = warp(image, w.box[k][None], self.size, fill=self.fill)[0]
    return {"image": np.clip(np.round(crop), 0, 255).astype(np.uint8), "label": int(w.label[k])}

  def __getattr__(self, name):
    if name in ("detection", "windows"):
      raise AttributeError(name)
    return getattr(self.detection, name)


# --------------------------------------------------------------------------- SVMs


def box_targets(proposals, gt_boxes) -> np.ndarray:
  """Appendix C's regression targets: (t_x, t_y, t_w, t_h) of gt_boxes [R, 4] from
  proposals [R, 4]: centre offsets in proposal widths and heights, log size ratios."""
  p, g = np.asarray(proposals, np.float64), np.asarray(gt_boxes, np.float64)
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  return np.stack(
    [
      ((g[:, 0] + g[:, 2]) - (p[:, 0] + p[:, 2])) / 2 / pw,
      ((g[:, 1] + g[:, 3]) - (p[:, 1] + p[:, 3])) / 2 / ph,
      np.log(gw / pw),
      np.log(gh / ph),
    ],
    -1,
  )


def apply_box_deltas(proposals, deltas) -> np.ndarray:
  """The inverse of `box_targets`: proposals [R, 4], deltas [R, 4] -> boxes [R, 4]."""
  p, d = np.asarray(proposals, np.float64), np.asarray(deltas, np.float64)
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  cx, cy = (p[:, 0] + p[:, 2]) / 2 + d[:, 0] * pw, (p[:, 1] + p[:, 3]) / 2 + d[:, 1] * ph
  w, h = pw * np.exp(np.minimum(d[:, 2], 4.0)), ph * np.exp(np.minimum(d[:, 3], 4.0))
  return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def feature_scale(features: np.ndarray, target_norm: float = 20.0) -> float:
  """The factor that gives the features a mean L2 norm of `target_norm` (the authors'
  code scales fc7 features so before the SVMs and the regressors)."""
  norm = float(np.linalg.norm(features, axis=1).mean())
  return target_norm / norm if norm > 0 else 1.0


@dataclasses.dataclass
class SVMs:
  """One linear SVM per class: score = features @ weights + bias, [R, D] -> [R, K]."""

  weights: np.ndarray  # [D, K]
  bias: np.ndarray  # [K]

  def __call__(self, features) -> np.ndarray:
    return np.asarray(features, np.float64) @ self.weights + self.bias


def train_svms(
  positives: list[np.ndarray],
  negatives: list[np.ndarray],
  *,
  c: float = 1e-3,
  positive_weight: float = 2.0,
  rounds: int = 2,
  start: int = 5000,
  seed: int = 0,
) -> SVMs:
  """Section 2.3's SVMs with hard negative mining (scikit-learn's LinearSVC).

  positives[k]: [n_k, D] features of class k's ground-truth boxes; negatives[k]: [m_k, D]
  of proposals with IoU < 0.3 with every box of class k. Each class starts from `start`
  random negatives; each further round adds the negatives the SVM scores above -1 (inside
  the margin: the hard ones) and refits. c, positive_weight: the authors' (C 0.001, positive
  class weight 2).
  """
  from sklearn.svm import LinearSVC  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  d = positives[0].shape[1]
  weights, bias = np.zeros((d, len(positives))), np.full(len(positives), -1.0)
  for k, (pos, neg) in enumerate(zip(positives, negatives, strict=True)):
    if not len(pos):
      continue  # a class without examples never fires
    cache = neg[rng.choice(len(neg), min(start, len(neg)), replace=False)] if len(neg) else neg
    svm = None
    for _ in range(max(rounds, 1)):
      x = np.concatenate([pos, cache])
      y = np.concatenate([np.ones(len(pos)), np.zeros(len(cache))])
      svm = LinearSVC(
        C=c,
        class_weight={1: positive_weight, 0: 1.0},
        loss="hinge",
        dual=True,
        max_iter=5000,
        random_state=seed,
      ).fit(x, y)
      if not len(neg):
        break
      hard = neg[svm.decision_function(neg) > -1]
      cache = np.unique(np.concatenate([cache, hard]), axis=0)
    weights[:, k], bias[k] = svm.coef_[0], svm.intercept_[0]
  return SVMs(weights, bias)


@dataclasses.dataclass
class BoxRegressor:
  """Class-specific linear regression of (t_x, t_y, t_w, t_h) from pool5 features:
  deltas = features @ weights[k] + bias[k]."""

  weights: np.ndarray  # [K, D, 4]
  bias: np.ndarray  # [K, 4]

  @classmethod
  def fit(
    cls, features: list[np.ndarray], targets: list[np.ndarray], dim: int, *, alpha: float = 1000.0
  ) -> BoxRegressor:
    """Ridge regression per class (Appendix C, lambda 1000); features[k] [n_k, D], targets[k]
    [n_k, 4]. A class with no examples keeps its proposals (zero deltas)."""
    from sklearn.linear_model import Ridge  # pylint: disable=import-outside-toplevel

    weights, bias = np.zeros((len(features), dim, 4)), np.zeros((len(features), 4))
    for k, (x, t) in enumerate(zip(features, targets, strict=True)):
      if len(x):
        ridge = Ridge(alpha=alpha).fit(x, t)
        weights[k], bias[k] = ridge.coef_.T, ridge.intercept_
    return cls(weights, bias)

  def __call__(self, features, labels) -> np.ndarray:
    """features [R, D], labels [R] 0-based -> deltas [R, 4]."""
    w, b = self.weights[labels], self.bias[labels]
    return np.einsum("rd,rdf->rf", np.asarray(features, np.float64), w) + b


@dataclasses.dataclass
class Classifiers:
  """What R-CNN trains on the fine-tuned network's features: the SVMs (on fc7 features times
  fc7_scale) and the box regressors (on pool5 features times pool5_scale). `save` and `load`
  keep them beside a run's checkpoints (the `rcnn_detection` evaluator writes
  `CLASSIFIERS_FILE` into its workdir)."""

  svms: SVMs
  regressor: BoxRegressor
  fc7_scale: float
  pool5_scale: float

  def save(self, path: str) -> str:
    """Writes the four arrays and the two scales to `path` (.npz) and returns it."""
    with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
      np.savez(
        f,
        svm_weights=self.svms.weights,
        svm_bias=self.svms.bias,
        regressor_weights=self.regressor.weights,
        regressor_bias=self.regressor.bias,
        scales=np.array([self.fc7_scale, self.pool5_scale]),
      )
    return path

  @classmethod
  def load(cls, path: str) -> Classifiers:
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"Classifiers.load: no R-CNN classifiers at {path!r}; the rcnn task's rcnn_detection "
        f"evaluator writes {CLASSIFIERS_FILE} into the workdir after training."
      )
    with np.load(path) as z:
      fc7_scale, pool5_scale = (float(v) for v in z["scales"])
      return cls(
        SVMs(z["svm_weights"], z["svm_bias"]),
        BoxRegressor(z["regressor_weights"], z["regressor_bias"]),
        fc7_scale,
        pool5_scale,
      )


CLASSIFIERS_FILE = "rcnn_classifiers.npz"


def detect(
  proposals,
  scores,
  deltas_fn=None,
  *,
  image_hw,
  score_thresh: float = 0.0,
  nms_thresh: float = 0.3,
  max_detections: int = 100,
) -> dict:
  """Section 2.2's test-time detection of one image: proposals [R, 4], SVM scores [R, K]
  -> {"boxes" [D, 4], "scores" [D], "labels" [D] 0-based}.

  Every (proposal, class) scoring above score_thresh is a candidate; deltas_fn(index [M],
  labels [M]) -> deltas [M, 4] moves it by its class's regressor (None: not moved); the
  boxes are clipped to image_hw (h, w), greedy NMS at nms_thresh runs per class, and the
  best max_detections are kept.
  """
  scores = np.asarray(scores, np.float64)
  index, labels = np.nonzero(scores > score_thresh)
  boxes = np.asarray(proposals, np.float64)[index]
  if deltas_fn is not None and len(index):
    boxes = apply_box_deltas(boxes, deltas_fn(index, labels))
  h, w = image_hw
  boxes = np.clip(boxes, 0, [w, h, w, h])
  keep_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  boxes, index, labels = boxes[keep_area], index[keep_area], labels[keep_area]
  s = scores[index, labels]
  keep = batched_nms_numpy(boxes.astype(np.float32), s, labels, nms_thresh)[:max_detections]
  return {"boxes": boxes[keep].astype(np.float32), "scores": s[keep], "labels": labels[keep]}
