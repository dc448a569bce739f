"""The detection task: image -> boxes, class labels, scores. Inputs, loss, evaluators, figures.

Records of the data set (`config.dataset`: a key of research.data.detection.ADAPTERS, or
"coco_format" with `config.data.annotation_file` and `config.data.image_dir`) come from
research.data.sources in the detection schema, then `DetectionTransform` gives fixed
shapes: the image resized so its longer side is `config.input.size` (or its shorter side
`config.input.min_size`, the longer at most `config.input.max_size`) and padded to a size
x size canvas, the objects padded to `config.input.max_boxes` with a validity mask;
training flips left-right with `config.input.flip_probability` (0.5, the papers'). The
model (a research.detection detector) is called with the batch's image sizes, and in
training with the ground truth and each image's global index, from which it draws its
anchor and RoI samples (research.train.steps.example_keys).

config.evals lists evaluators of `EVALUATORS`, by default `detection_ap` (VOC07 mAP@0.5
and COCO AP, research.train.evaluators.DetectionAP) on the test split every
`eval_every_steps`.
"""

from __future__ import annotations

import os

from ml_collections import ConfigDict

from research.data import detection as data
from research.data.sources import COCO_FORMAT
from research.detection.faster_rcnn import detection_loss
from research.train import evaluators
from research.train.tasks import Inputs
from research.train.writer import read_metrics


def loss_fn(config: ConfigDict):
  """The detector's summed losses (`research.detection.faster_rcnn.detection_loss`);
  config.loss, where set, must say "detection"."""
  if config.get("loss", "detection") != "detection":
    raise ValueError(
      f"loss: the detection task's loss is the detector's own, 'detection'; received "
      f"{config.loss!r}."
    )
  return detection_loss


def _identity(batch):
  return batch


class _Records:
  """Transforms a schema record (train: with rng); drops instance masks a box detector never
  reads. The sources give schema records (research.data.sources.from_config)."""

  def __init__(self, transform, masks: bool):
    self.transform, self.masks = transform, masks

  def __call__(self, record: dict, rng=None) -> dict:
    if not self.masks and "masks" in record:
      record = {k: v for k, v in record.items() if k != "masks"}  # keep batches small
    if rng is None:
      return self.transform(record)
    return self.transform(record, rng)


def input_fns(config: ConfigDict, num_classes: int) -> Inputs:
  """The per-record transforms `config.input` describes (size, max_boxes, min_size,
  max_size, value_range, mean, std, channels, flip_probability, masks; YOLO's
  scale_jitter, translate, exposure and saturation)."""
  known = sorted((*data.ADAPTERS, COCO_FORMAT))
  if config.dataset not in known:
    raise ValueError(
      f"dataset: the detection task needs one of {known}; received {config.dataset!r}."
    )
  c = config.input
  optional = lambda key: tuple(c[key]) if c.get(key) is not None else None  # noqa: E731
  kwargs = dict(
    size=c.size,
    max_boxes=c.max_boxes,
    min_size=c.get("min_size") or None,
    max_size=c.get("max_size") or None,
    num_classes=num_classes,
    value_range=tuple(c.get("value_range", (0.0, 1.0))),
    mean=optional("mean"),
    std=optional("std"),
    channels=c.get("channels"),
  )
  if config.get("proposals"):
    kwargs["max_proposals"] = config.proposals.get("max_proposals", 2000)
  masks = bool(c.get("masks", False))
  train = data.RandomDetectionTransform(
    **kwargs,
    flip_probability=c.get("flip_probability", 0.5),
    scale_jitter=c.get("scale_jitter", 0.0),
    translate=c.get("translate", 0.0),
    exposure=c.get("exposure", 1.0),
    saturation=c.get("saturation", 1.0),
  )
  return Inputs(
    transform=_identity,
    train_record=_Records(train, masks),
    eval_record=_Records(data.DetectionTransform(**kwargs), masks),
  )


def model_kwargs(batch: dict, *, train: bool) -> dict:
  """Each image's size inside the canvas, the region proposals when the records have them
  (`config.proposals`); in training the padded ground truth (with the
  instance masks when `config.input.masks` keeps them) and the images' global positions
  (per-image sample keys)."""
  kwargs = {"image_size": batch["image_size"]}
  if "proposals" in batch:  # config.proposals: R-CNN, Fast R-CNN
    kwargs |= {"proposals": batch["proposals"], "proposal_valid": batch["proposal_valid"]}
  if train:
    kwargs |= {
      "boxes": batch["boxes"],
      "labels": batch["labels"],
      "valid": batch["valid"],
      "example_index": batch["example_index"],
    }
    if "masks" in batch:  # config.input.masks: instance masks for a mask branch
      kwargs["masks"] = batch["masks"]
  return kwargs


EVALUATORS = {"detection_ap": evaluators.DetectionAP}


def default_evals(config: ConfigDict) -> list[ConfigDict]:
  """VOC07 mAP@0.5 and COCO AP on the test split every `config.eval_every_steps`."""
  return [
    ConfigDict({"type": "detection_ap", "split": "test", "every_steps": config.eval_every_steps})
  ]


def figures(workdir: str) -> list[str]:
  """figures/learning_curves.png: the detector's losses and the test AP (box, and mask when
  evaluated) against steps."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  rows = read_metrics(workdir)
  train = [r for r in rows if r["split"] == "train"]
  # Rows of whichever evaluation wrote test_ numbers ("test", "test[:20]", ...).
  test = [r for r in rows if r["split"] != "train" and "test_map50" in r]
  fig = Figure(figsize=(9, 3.5))
  ax1, ax2 = fig.subplots(1, 2)
  losses = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
  for key in ("loss", *losses):
    if train and key in train[0]:
      ax1.plot([r["step"] for r in train], [r[key] for r in train], label=key)
  ax1.set(xlabel="step", ylabel="loss", title="training losses", yscale="log")
  ax1.legend(fontsize=7)
  aps = (("test_map50", "VOC07 mAP@0.5"), ("test_coco_ap", "COCO AP"), ("test_mask_ap", "mask AP"))
  for key, label in aps:
    if test and key in test[0]:
      ax2.plot([r["step"] for r in test], [r[key] for r in test], "o-", label=label)
  ax2.set(xlabel="step", ylabel="AP", title="test AP", ylim=(0, 1))
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "figures", "learning_curves.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  return [path]
