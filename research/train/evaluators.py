"""Evaluators: the `config.evals` list, each entry a type with its own split and schedule.

    config.evals = [
        ConfigDict({"type": "accuracy", "split": "test", "every_steps": 500}),
        ConfigDict({"type": "confusion", "split": "test"}),          # at the end only
    ]

Keys of an entry: `type` (one of the task's `EVALUATORS`), `split` ("test" names the data
set's test split, "train" the run's training split (`config.train_split`, else the data
set's), anything else is a TFDS split such as "train[:10%]"),
`every_steps` (0: only after the last step), `prefix` (default f"{split}_", put before
every number), `name` (the metrics.jsonl "split" of its rows; default the split, and
"train_eval" for "train", whose rows are the training log's).

Two kinds, as big_vision's evaluators:
  `DeviceSums`: the compiled step returns per-batch sums (psum'd across devices); the host
    adds them over the split and `summarize`s. Cheap: nothing per example leaves the device.
  `HostEvaluator`: the compiled step returns per-example rows (`predict`); the host
    collects every row of the whole split (from every process) and computes what needs
    them all at once (COCO AP, a confusion matrix).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from ml_collections import ConfigDict

from research.data import pipeline
from research.train import steps
from research.train.parallel import DataParallel

EVAL_KEYS = ("type", "split", "every_steps", "prefix", "name")


@dataclasses.dataclass
class Context:
  """What every evaluator of a run shares.

  sources(split) -> a random-access data source of that split (a TFDS split name).
  transform / eval_record: the task's eval-time batch and record transforms.
  model_kwargs(batch, *, train) -> dict: the task's extra model arguments.
  """

  model: nn.Module
  parallel: DataParallel
  sources: Callable[[str], Any]
  transform: Callable
  eval_record: Callable | None
  model_kwargs: Callable
  eval_batch_size: int
  num_classes: int
  workdir: str
  train_split: str
  test_split: str
  class_names: tuple[str, ...] | None = None


class Evaluator:
  """One entry of `config.evals`. Subclasses add `run`'s computation."""

  extra_keys: tuple[str, ...] = ()  # keys an entry of this type may set besides EVAL_KEYS

  def __init__(self, spec: ConfigDict, ctx: Context):
    allowed = EVAL_KEYS + self.extra_keys
    unknown = sorted(set(spec.keys()) - set(allowed))
    if unknown:
      raise ValueError(
        f"evals: {spec.type!r} entries take the keys {list(allowed)}; received {unknown}."
      )
    every = spec.get("every_steps", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
      raise ValueError(
        f"evals: {spec.type!r} every_steps: expected 0 (after the last step only) or a "
        f"positive integer; received {every!r}."
      )
    self.spec, self.ctx = spec, ctx
    self.every_steps = every
    split = spec.get("split", "test")
    self.split_name = split
    self.split = {"test": ctx.test_split, "train": ctx.train_split}.get(split, split)
    self.prefix = spec.get("prefix", f"{split}_")
    # metrics.jsonl's "train" rows are the training log's: an evaluation of the training
    # split goes under "train_eval" unless named.
    self.name = spec.get("name", "train_eval" if split == "train" else split)
    self._source = None

  def due(self, step: int) -> bool:
    return bool(self.every_steps) and step % self.every_steps == 0

  def batches(self):
    """The split once, in order, in eval batches with a [B] "mask" of real rows."""
    if self._source is None:
      self._source = self.ctx.sources(self.split)
    return pipeline.eval_batches(
      self._source,
      global_batch_size=self.ctx.eval_batch_size,
      transform=self.ctx.transform,
      record_transform=self.ctx.eval_record,
    )

  def run(self, state, *, final: bool) -> dict:
    raise NotImplementedError


class DeviceSums(Evaluator):
  """Subclasses define `sums(outputs, batch) -> {name: scalar}` (traced, rows with
  batch["mask"] False must add nothing) and `summarize(totals, prefix) -> dict`."""

  sums: Callable[..., dict]
  summarize: Callable[..., dict]

  def __init__(self, spec, ctx):
    super().__init__(spec, ctx)
    self._step = ctx.parallel.compile_eval(
      steps.eval_step, model=ctx.model, metrics_fn=type(self).sums, model_kwargs=ctx.model_kwargs
    )

  def run(self, state, *, final: bool) -> dict:
    totals = None
    for batch in self.batches():
      sums = self._step(state, self.ctx.parallel.put_batch(batch))
      totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    return type(self).summarize(self.ctx.parallel.single(totals), self.prefix)


def _predict_step(state, batch, *, model, predict_fn, model_kwargs, axis_name=None):
  """Per-example rows of one batch; `axis_name` is unused (rows are not reduced)."""
  del axis_name
  return predict_fn(steps.apply_model(state, batch, model=model, model_kwargs=model_kwargs), batch)


class HostEvaluator(Evaluator):
  """Subclasses define `predict(outputs, batch) -> {name: [B, ...]}` (traced; include
  whatever ground truth `update` needs, and batch["mask"]), `reset()`, `update(rows)`
  (numpy rows of every process, padded rows included: use rows["mask"]) and
  `result(final) -> dict`."""

  predict: Callable[..., dict]

  def __init__(self, spec, ctx):
    super().__init__(spec, ctx)
    self._step = ctx.parallel.compile_eval(
      _predict_step, model=ctx.model, predict_fn=type(self).predict, model_kwargs=ctx.model_kwargs
    )

  def run(self, state, *, final: bool) -> dict:
    self.reset()
    for batch in self.batches():
      rows = self._step(state, self.ctx.parallel.put_batch(batch))
      self.update(self.ctx.parallel.rows(rows))
    return self.result(final)

  def reset(self) -> None:
    raise NotImplementedError

  def update(self, rows: dict) -> None:
    raise NotImplementedError

  def result(self, final: bool) -> dict:
    raise NotImplementedError

  def figure_path(self, stem: str) -> str:
    path = os.path.join(self.ctx.workdir, "figures", f"{stem}_{self.name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def build(specs, registry: dict[str, type[Evaluator]], ctx: Context, task: str) -> list[Evaluator]:
  """The evaluators of `config.evals` (a list of ConfigDicts or dicts)."""
  out = []
  for i, spec in enumerate(specs):
    spec = spec if isinstance(spec, ConfigDict) else ConfigDict(dict(spec))
    kind = spec.get("type")
    if kind not in registry:
      raise ValueError(
        f"evals[{i}].type: unknown evaluator {kind!r} for task {task!r}; expected one of "
        f"{sorted(registry)}."
      )
    out.append(registry[kind](spec, ctx))
  names = [e.name for e in out]
  if len(set(names)) != len(names):
    raise ValueError(
      f"evals: two evaluators write the same metrics.jsonl split {names}; give one a `name`."
    )
  return out


class DetectionAP(HostEvaluator):
  """VOC and COCO average precision of a detector over the whole split, through
  `research.evaluate.detection.evaluate` (pycocotools for COCO).

  The model returns `(detections, out)` with detections {"boxes" [B, K, 4], "scores"
  [B, K], "labels" [B, K], "valid" [B, K], optionally Mask R-CNN's "mask_probs" [B, K, M, M]
  (each detection's mask in its box) or "masks" [B, K, H, W] probabilities} in the input
  image's pixels; the batch holds the padded ground truth of
  `research.data.detection.DetectionTransform` ("boxes", "labels", "valid", optional
  "difficult", "crowd", "masks"). Boxes are taken back to the original image's pixels
  ("original_size" / "image_size") so COCO's small/medium/large areas mean what they mean.
  Masks are compared in the resized image (the canvas cropped to "image_size"), where the
  ground truth masks are: "mask_probs" are pasted at their boxes there
  (research.detection.mask_head.paste_masks_in_image, torchvision's) and thresholded at 0.5.

  Numbers: {prefix}map50 (VOC 2007 11-point mAP at IoU 0.5, the Faster R-CNN paper's),
  {prefix}map50_area (the VOC 2010+ area), {prefix}coco_ap, coco_ap50, coco_ap75,
  coco_aps, coco_apm, coco_apl, coco_ar100, and with masks (`masks: True`, the default when
  the detector gives masks) {prefix}mask_ap and mask_ap50.
  """

  extra_keys = ("masks",)

  @staticmethod
  def predict(outputs, batch) -> dict:
    detections, _ = outputs
    rows = {
      f"det_{k}": v for k, v in detections.items() if k in ("boxes", "scores", "labels", "valid")
    }
    if "mask_probs" in detections:
      rows["det_mask_probs"] = detections["mask_probs"]
    elif "masks" in detections:
      rows["det_masks"] = detections["masks"] >= 0.5
    for key in (
      "boxes",
      "labels",
      "valid",
      "difficult",
      "crowd",
      "masks",
      "image_size",
      "original_size",
    ):
      if key in batch:
        rows[f"gt_{key}"] = batch[key]
    rows["mask"] = batch["mask"]
    return rows

  def reset(self) -> None:
    self.detections, self.truths = [], []

  def update(self, rows: dict) -> None:
    from research.detection.mask_head import (  # pylint: disable=import-outside-toplevel
      paste_masks_in_image,
    )

    for i in np.flatnonzero(rows["mask"]):
      scale = np.ones(4)
      if "gt_original_size" in rows and "gt_image_size" in rows:
        (big_h, big_w), (h, w) = rows["gt_original_size"][i], rows["gt_image_size"][i]
        scale = np.array([big_w / w, big_h / h, big_w / w, big_h / h])
      det = {k[4:]: rows[k][i] for k in rows if k.startswith("det_")}
      gt = {k[3:]: rows[k][i] for k in rows if k.startswith("gt_") and not k.endswith("_size")}
      if "mask_probs" in det:
        # Masks in the resized image, where the ground truth's are (see the docstring).
        hw = rows["gt_image_size"][i] if "gt_image_size" in rows else det["mask_probs"].shape
        h, w = (int(round(float(v))) for v in hw[:2])
        det["masks"] = paste_masks_in_image(det.pop("mask_probs"), det["boxes"], (h, w)) >= 0.5
        if "masks" in gt:
          gt["masks"] = gt["masks"][:, :h, :w]
      det["boxes"] = det["boxes"] * scale
      gt["boxes"] = gt["boxes"] * scale
      self.detections.append(det)
      self.truths.append(gt)

  def result(self, final: bool) -> dict:
    from research.evaluate import detection  # pylint: disable=import-outside-toplevel

    has_masks = bool(self.detections) and "masks" in self.detections[0]
    masks = bool(self.spec.get("masks", has_masks))
    numbers = detection.evaluate(
      self.detections,
      self.truths,
      num_classes=self.ctx.num_classes,
      masks=masks,
      class_names=list(self.ctx.class_names) if self.ctx.class_names else None,
    )
    p = self.prefix
    out = {
      f"{p}map50": numbers["box_voc07_mAP"],
      f"{p}map50_area": numbers["box_voc_mAP"],
      **{f"{p}coco_{k.lower()}": numbers[f"box_coco_{k}"] for k in _COCO_REPORTED},
    }
    if masks:
      out[f"{p}mask_ap"] = numbers["mask_coco_AP"]
      out[f"{p}mask_ap50"] = numbers["mask_coco_AP50"]
    return out


_COCO_REPORTED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
