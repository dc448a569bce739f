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

import time

import jax
import numpy as np
from ml_collections import ConfigDict

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


class RCNNDetection(evaluators.Evaluator):
  """SVMs and box regressors on the fine-tuned network's features, then detection of the
  split's images. Keys: svm_images (training images whose windows train the SVMs and
  regressors; 0: all), score_thresh (the SVM score a detection needs, -1: the margin),
  batch (windows per forward pass)."""

  extra_keys = ("svm_images", "score_thresh", "batch")

  def _extract(self, apply_fn, variables, image, boxes):
    """fc7 [R, D], pool5 [R, E] of the windows `boxes` [R, 4] of `image`."""
    regions = self.ctx.sources(self.ctx.train_split)
    size, fill = regions.size, regions.fill
    batch = int(self.spec.get("batch", 512))
    fc7, pool5 = [], []
    for lo in range(0, len(boxes), batch):
      crops = rcnn.warp(image, boxes[lo : lo + batch], size, fill=fill)
      crops = np.clip(np.round(crops), 0, 255).astype(np.uint8)
      n = len(crops)
      padded = np.zeros((batch, *crops.shape[1:]), np.uint8)
      padded[:n] = crops  # one compiled shape for every call
      x = self.ctx.transform({"image": padded, "label": np.zeros(batch, np.int64)})["image"]
      a, b = apply_fn(variables, x)
      fc7.append(np.asarray(a)[:n])
      pool5.append(np.asarray(b)[:n])
    return np.concatenate(fc7), np.concatenate(pool5)

  def run(self, state, *, final: bool) -> dict:
    model = self.ctx.model
    variables = {"params": self.ctx.parallel.single(state.params)}
    stats = self.ctx.parallel.single(state.batch_stats)
    if stats:
      variables["batch_stats"] = stats
    apply_fn = jax.jit(lambda v, x: _features(*reversed(model.apply(v, x, train=False))))
    k = self.ctx.num_classes - 1  # the windows' classes include the background
    train = self.ctx.sources(self.ctx.train_split).detection
    count = int(self.spec.get("svm_images", 0)) or len(train)
    positives, negatives = [[] for _ in range(k)], [[] for _ in range(k)]
    reg_x, reg_t = [[] for _ in range(k)], [[] for _ in range(k)]
    for i in range(min(count, len(train))):
      record = train[i]
      gt_boxes, gt_labels = np.asarray(record["boxes"]), np.asarray(record["labels"])
      proposals = np.asarray(record["proposals"])
      fc7, pool5 = self._extract(
        apply_fn, variables, record["image"], np.concatenate([gt_boxes, proposals])
      )
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
          reg_t[c].append(
            rcnn.box_targets(proposals[j : j + 1], gt_boxes[best[j] : best[j] + 1])[0]
          )
    stack = lambda rows, d: np.asarray(rows, np.float64).reshape(-1, d)  # noqa: E731
    dim_fc7 = next(len(p[0]) for p in positives if p)
    dim_pool5 = next((len(x[0]) for x in reg_x if x), dim_fc7)
    pos = [stack(p, dim_fc7) for p in positives]
    neg = [np.concatenate(n) if n else np.zeros((0, dim_fc7)) for n in negatives]
    fc7_scale = rcnn.feature_scale(np.concatenate([*pos, *(n[:1000] for n in neg)]))
    pool5_all = [stack(x, dim_pool5) for x in reg_x]
    pool5_scale = rcnn.feature_scale(np.concatenate(pool5_all)) if any(map(len, pool5_all)) else 1
    svms = rcnn.train_svms([p * fc7_scale for p in pos], [n * fc7_scale for n in neg])
    regressor = rcnn.BoxRegressor.fit(
      [x * pool5_scale for x in pool5_all], [stack(t, 4) for t in reg_t], dim_pool5
    )
    return self._detect(apply_fn, variables, svms, regressor, fc7_scale, pool5_scale)

  def _detect(self, apply_fn, variables, svms, regressor, fc7_scale, pool5_scale) -> dict:
    from research.evaluate import detection  # pylint: disable=import-outside-toplevel

    test = self.ctx.sources(self.split).detection
    detections, truths = [], []
    network = postprocess = 0.0
    for i in range(len(test)):
      record = test[i]
      proposals = np.asarray(record["proposals"])
      start = time.perf_counter()
      fc7, pool5 = self._extract(apply_fn, variables, record["image"], proposals)
      middle = time.perf_counter()
      scores = svms(fc7 * fc7_scale)
      deltas = lambda index, labels: regressor(pool5[index] * pool5_scale, labels)  # noqa: E731,B023
      found = rcnn.detect(
        proposals,
        scores,
        deltas,
        image_hw=np.asarray(record["image"]).shape[:2],
        score_thresh=float(self.spec.get("score_thresh", -1.0)),
      )
      postprocess += time.perf_counter() - middle
      network += middle - start
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
