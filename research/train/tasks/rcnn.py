"""The R-CNN task: fine-tune a classifier on warped regions, then SVMs, box regression and
detection (research.detection.rcnn).

The records are warped windows of a detection data set's proposals
(`research.detection.rcnn.RegionRecords`, from `config.regions` and `config.proposals`
in research.data.sources), labelled 0 for background and class + 1, so the training is
the classification task's (its transforms, loss and `accuracy` evaluator: window
accuracy). After the last step the `rcnn_detection` evaluator extracts fc7 and pool5
features of `svm_images` training images' windows, trains one linear SVM per class with
hard negative mining and the class-specific box regressors, and detects on the test
split's images: VOC07 mAP@0.5 and COCO AP, as the detection task reports them, with the
seconds per image of warping and the network and of the SVMs, regression and NMS.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from research.detection import rcnn
from research.ops.boxes.host import iou_numpy
from research.train import evaluators
from research.train.tasks import classification

input_fns = classification.input_fns
loss_fn = classification.loss_fn
model_kwargs = classification.model_kwargs
figures = classification.figures


def _features(out: dict, logits) -> tuple:
  """(fc7, pool5) of a classifier's outputs: "pre_logits" (AlexNet's relu7, a ResNet's pooled
  features), and the last convolutional map flattened ("avgpool", "stage4", ...)."""
  fc7 = out["pre_logits"]
  for key in ("avgpool", "pool5", "stage4", "features"):
    if key in out:
      pool5 = out[key]
      return fc7, pool5.reshape(pool5.shape[0], -1)
  del logits
  return fc7, fc7


class WindowFeatures:
  """fc7 [R, D] and pool5 [R, E] features of windows of an image: `features(image, boxes
  [R, 4])`. Each window is dilated and warped to size x size (`rcnn.warp`, outside the image
  `fill`), normalized by the task's eval transform and run through the network in padded
  batches of `batch` (one compiled shape for every call)."""

  def __init__(self, model, variables: dict, transform, size: int, fill, batch: int = 512):
    self.variables, self.transform = variables, transform
    self.size, self.fill, self.batch = size, fill, batch
    self.apply_fn = jax.jit(lambda v, x: _features(*reversed(model.apply(v, x, train=False))))

  def __call__(self, image, boxes) -> tuple[np.ndarray, np.ndarray]:
    fc7, pool5 = [], []
    # At least one (padded) batch: no boxes give [0, D] and [0, E] features.
    for lo in range(0, max(len(boxes), 1), self.batch):
      crops = rcnn.warp(image, boxes[lo : lo + self.batch], self.size, fill=self.fill)
      crops = np.clip(np.round(crops), 0, 255).astype(np.uint8)
      n = len(crops)
      padded = np.zeros((self.batch, *crops.shape[1:]), np.uint8)
      padded[:n] = crops
      x = self.transform({"image": padded, "label": np.zeros(self.batch, np.int64)})["image"]
      a, b = self.apply_fn(self.variables, x)
      fc7.append(np.asarray(a)[:n])
      pool5.append(np.asarray(b)[:n])
    return np.concatenate(fc7), np.concatenate(pool5)


def detect_image(
  features: WindowFeatures, classifiers: rcnn.Classifiers, record: dict, score_thresh=-1.0
) -> tuple[dict, float, float]:
  """R-CNN's detection of one record ("image" uint8 [H, W, C], "proposals" [P, 4]) ->
  (detections {"boxes" [D, 4], "scores" [D], "labels" [D] 0-based}, seconds of warping and
  the network, seconds of the SVMs, box regression and NMS)."""
  proposals = np.asarray(record["proposals"])
  start = time.perf_counter()
  fc7, pool5 = features(record["image"], proposals)
  middle = time.perf_counter()
  scores = classifiers.svms(fc7 * classifiers.fc7_scale)

  def deltas(index, labels):
    return classifiers.regressor(pool5[index] * classifiers.pool5_scale, labels)

  found = rcnn.detect(
    proposals,
    scores,
    deltas,
    image_hw=np.asarray(record["image"]).shape[:2],
    score_thresh=score_thresh,
  )
  return found, middle - start, time.perf_counter() - middle


def train_classifiers(
  features: WindowFeatures, train, count: int, k: int, *, svm_c: float = 1e-3
) -> rcnn.Classifiers:
  """Sections 2.3 and Appendix C on the first `count` records of `train` (detection records:
  "image", "boxes" [G, 4], "labels" [G] 0-based, "proposals" [P, 4]; k object classes): fc7 features of the ground truth (positives) and of the
  proposals under IoU 0.3 with every box of a class (its negatives) -> `rcnn.train_svms`;
  pool5 features of proposals over IoU 0.6 with a box -> that box's class's regressor.
  svm_c: the SVMs' C (the authors' 0.001 on features of mean norm 20)."""
  positives, negatives = [[] for _ in range(k)], [[] for _ in range(k)]
  reg_x, reg_t = [[] for _ in range(k)], [[] for _ in range(k)]
  for i in tqdm(range(min(count, len(train))), desc="R-CNN SVM features", leave=False):
    record = train[i]
    gt_boxes, gt_labels = np.asarray(record["boxes"]), np.asarray(record["labels"])
    proposals = np.asarray(record["proposals"])
    fc7, pool5 = features(record["image"], np.concatenate([gt_boxes, proposals]))
    g = len(gt_boxes)
    for f, label in zip(fc7[:g], gt_labels, strict=True):
      positives[label].append(f)
    overlaps = iou_numpy(proposals, gt_boxes) if g else np.zeros((len(proposals), 0))
    for c in range(k):
      mine = overlaps[:, gt_labels == c]
      low = mine.max(1) < 0.3 if mine.shape[1] else np.ones(len(proposals), bool)
      negatives[c].append(fc7[g:][low])
    if g:
      best, iou = overlaps.argmax(1), overlaps.max(1)
      for j in np.flatnonzero(iou > 0.6):
        c = gt_labels[best[j]]
        reg_x[c].append(pool5[g + j])
        reg_t[c].append(rcnn.box_targets(proposals[j : j + 1], gt_boxes[best[j] : best[j] + 1])[0])
  stack = lambda rows, d: np.asarray(rows, np.float64).reshape(-1, d)  # noqa: E731
  dim_fc7 = next(len(p[0]) for p in positives if p)
  dim_pool5 = next((len(x[0]) for x in reg_x if x), dim_fc7)
  pos = [stack(p, dim_fc7) for p in positives]
  neg = [np.concatenate(n) if n else np.zeros((0, dim_fc7)) for n in negatives]
  fc7_scale = rcnn.feature_scale(np.concatenate([*pos, *(n[:1000] for n in neg)]))
  pool5_all = [stack(x, dim_pool5) for x in reg_x]
  pool5_scale = rcnn.feature_scale(np.concatenate(pool5_all)) if any(map(len, pool5_all)) else 1
  svms = rcnn.train_svms([p * fc7_scale for p in pos], [n * fc7_scale for n in neg], c=svm_c)
  regressor = rcnn.BoxRegressor.fit(
    [x * pool5_scale for x in pool5_all], [stack(t, 4) for t in reg_t], dim_pool5
  )
  return rcnn.Classifiers(svms, regressor, fc7_scale, pool5_scale)


class RCNNDetection(evaluators.Evaluator):
  """SVMs and box regressors on the fine-tuned network's features (written to the workdir's
  `rcnn.CLASSIFIERS_FILE`), then detection of the split's images. Keys: svm_images
  (training images whose windows train the SVMs and regressors; 0: all), score_thresh (the
  SVM score a detection needs, -1: the margin), batch (windows per forward pass), svm_c (the
  SVMs' C, default the authors' 0.001)."""

  extra_keys = ("svm_images", "score_thresh", "batch", "svm_c")

  def run(self, state, *, final: bool) -> dict:
    variables = {"params": self.ctx.parallel.single(state.params)}
    stats = self.ctx.parallel.single(state.batch_stats)
    if stats:
      variables["batch_stats"] = stats
    regions = self.ctx.sources(self.ctx.train_split)
    features = WindowFeatures(
      self.ctx.model,
      variables,
      self.ctx.transform,
      regions.size,
      regions.fill,
      batch=int(self.spec.get("batch", 512)),
    )
    train = regions.detection
    count = int(self.spec.get("svm_images", 0)) or len(train)
    # The windows' classes include the background.
    classifiers = train_classifiers(
      features, train, count, self.ctx.num_classes - 1, svm_c=float(self.spec.get("svm_c", 1e-3))
    )
    if jax.process_index() == 0:
      classifiers.save(os.path.join(self.ctx.workdir, rcnn.CLASSIFIERS_FILE))
    return self._detect(features, classifiers)

  def _detect(self, features: WindowFeatures, classifiers: rcnn.Classifiers) -> dict:
    from research.evaluate import detection  # pylint: disable=import-outside-toplevel

    test = self.ctx.sources(self.split).detection
    detections, truths = [], []
    network = postprocess = 0.0
    for i in tqdm(range(len(test)), desc="R-CNN detection", leave=False):
      record = test[i]
      found, seconds_network, seconds_post = detect_image(
        features, classifiers, record, float(self.spec.get("score_thresh", -1.0))
      )
      network += seconds_network
      postprocess += seconds_post
      detections.append(found)
      truths.append(
        {k: record[k] for k in ("boxes", "labels", "difficult", "crowd") if k in record}
      )
    names = self.ctx.class_names
    numbers = detection.evaluate(
      detections,
      truths,
      num_classes=self.ctx.num_classes - 1,
      masks=False,
      class_names=list(names[1:]) if names else None,
    )
    p, n = self.prefix, max(len(test), 1)
    return {
      f"{p}map50": numbers["box_voc07_mAP"],
      f"{p}map50_area": numbers["box_voc_mAP"],
      **{f"{p}coco_{key.lower()}": numbers[f"box_coco_{key}"] for key in evaluators._COCO_REPORTED},
      f"{p}seconds_network_per_image": network / n,
      f"{p}seconds_postprocess_per_image": postprocess / n,
    }


EVALUATORS = {**classification.EVALUATORS, "rcnn_detection": RCNNDetection}


def default_evals(config: ConfigDict) -> list[ConfigDict]:
  """Window accuracy on the test split every `config.eval_every_steps`; after the last step
  the SVMs, the regressors and detection on the test split."""
  return [
    ConfigDict({"type": "accuracy", "split": "test", "every_steps": config.eval_every_steps}),
    ConfigDict({"type": "rcnn_detection", "split": "test", "every_steps": 0, "name": "detection"}),
  ]
