"""The segmentation task: image -> a class per pixel. Inputs, loss, evaluators, figures.

Records of `config.dataset` come from research.data.sources in research.data.segmentation's
schema ({"image" uint8 [H, W, C], "labels" [H, W]}, 255 ignored), with the spec's
segmentation classes (digit_scenes/multi: 11, background and the ten digits).
`config.input` describes the transforms: value_range, mean, std, channels (as
classification's); crop_size (0: whole images; S: training records padded to at least S x S
with the mean colour and label 255, then a random S x S window), flip_probability (a
left-right mirror of image and labels together; digits: 0) and eval_size (0: whole images;
S: evaluation records padded at the bottom and right to S x S with label 255, one shape for
every batch). The model (a research.models.fcn segmenter) gets the images only and returns
logits [B, H, W, C] at the input's resolution.

The loss (`segmentation_loss`) is the per-pixel softmax cross-entropy averaged over the
valid (not 255) pixels of the batch. The paper's (Caffe's SoftmaxWithLoss with normalize:
false in the reference nets) is the sum over the pixels, so its gradient is ours times the
number N of valid pixels: the reference's base_lr 1e-10 on summed VOC images (N ~ 500 x 375)
is a learning rate of about 1e-10 * 1.9e5 = 1.9e-5 here. Averaging keeps one learning rate
meaningful across image sizes and batch sizes.

config.evals lists evaluators of `EVALUATORS`, by default `segmentation` on the test split
every `eval_every_steps`: the confusion matrix summed over the whole split (device-side,
research.evaluate.segmentation.confusion_matrix per batch) -> {prefix}pixel_accuracy,
mean_accuracy, mean_iu, fw_iu and loss, and after the last step
figures/predictions_{name}.png: image, ground truth and prediction of the split's first
scenes.
"""

from __future__ import annotations

import functools
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research.data import segmentation as data
from research.data import voc_segmentation
from research.evaluate import segmentation as evaluate
from research.train import evaluators, steps
from research.train.steps import no_model_kwargs
from research.train.tasks import Inputs
from research.train.writer import read_metrics

IGNORE = data.IGNORE


def _logits(outputs, where: str):
  logits, _ = outputs
  if logits is None or logits.ndim != 4:
    raise ValueError(
      f"{where}: expected the model's logits [B, H, W, C] (a segmenter, e.g. "
      f"fcn.FCN8s); received {None if logits is None else logits.shape}."
    )
  return logits


def _pixel_losses(logits, labels):
  """(cross-entropy [B, H, W] float32, valid [B, H, W] bool): 0 where labels is IGNORE."""
  if logits.shape[:3] != labels.shape:
    raise ValueError(
      f"segmentation_loss: logits {logits.shape} must be [B, H, W, C] over labels "
      f"[B, H, W] = {labels.shape}."
    )
  valid = labels != IGNORE
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  return jnp.where(valid, ce, 0.0), valid


def segmentation_loss(outputs, batch, class_weights=None) -> dict:
  """Per-pixel softmax cross-entropy; `outputs` = (logits [B, H, W, C], out), batch["labels"]
  int [B, H, W] with 255 ignored.

  Returns {"loss": the mean over the batch's valid pixels (the paper sums them: see the
  module docstring), "pixel_accuracy": the fraction of valid pixels predicted right}, in
  float32 whatever the logits' dtype. A batch without valid pixels has loss 0.
  class_weights: None, or [C] weights w: the loss is sum(w[y] ce) / sum(w[y]) over the
  valid pixels (the paper's Section 4.3 "class balancing ... by weighting the loss").
  """
  logits = _logits(outputs, "segmentation_loss")
  ce, valid = _pixel_losses(logits, batch["labels"])
  count = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  right = (jnp.argmax(logits, -1) == batch["labels"]) & valid
  if class_weights is None:
    loss = ce.sum() / count
  else:
    if len(class_weights) != logits.shape[-1]:
      raise ValueError(
        f"class_weights: expected one weight per class, {logits.shape[-1]} (the logits' last "
        f"axis); received {len(class_weights)}."
      )
    weights = jnp.asarray(class_weights, jnp.float32)[jnp.where(valid, batch["labels"], 0)]
    weights = jnp.where(valid, weights, 0.0)
    loss = (weights * ce).sum() / jnp.maximum(weights.sum(), 1e-12)
  return {"loss": loss, "pixel_accuracy": right.sum() / count}


def loss_fn(config: ConfigDict):
  """`segmentation_loss`, weighted by `config.class_weights` where given (a sequence of C
  positive numbers; empty or absent: unweighted, the paper's); config.loss, where set, must
  say "segmentation"."""
  if config.get("loss", "segmentation") != "segmentation":
    raise ValueError(
      f"loss: the segmentation task's loss is 'segmentation' (per-pixel cross-entropy); "
      f"received {config.loss!r}."
    )
  weights = config.get("class_weights") or ()
  if not weights:
    return segmentation_loss
  weights = np.asarray(weights, np.float64)
  classes = config.get("num_classes")
  if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
    raise ValueError(
      f"class_weights: expected one positive number per class; received {list(weights)}."
    )
  if classes and len(weights) != classes:
    raise ValueError(
      f"class_weights: expected {classes} weights (num_classes); received {len(weights)}."
    )
  return functools.partial(segmentation_loss, class_weights=tuple(float(w) for w in weights))


def input_fns(config: ConfigDict, num_classes: int) -> Inputs:
  """The batch transform and the per-record crops `config.input` describes (module
  docstring)."""
  del num_classes  # the sources check the class ids as they read each record
  c = config.input
  optional = lambda key: tuple(c[key]) if c.get(key) is not None else None  # noqa: E731
  transform = data.SegmentationTransform(
    value_range=tuple(c.get("value_range", (0.0, 1.0))),
    mean=optional("mean"),
    std=optional("std"),
    channels=c.get("channels"),
  )
  fill = tuple(int(v) for v in transform.fill(len(c.get("mean") or (0,))))
  crop, flip = c.get("crop_size", 0) or 0, c.get("flip_probability", 0.0) or 0.0
  for key, value in (("crop_size", crop), ("eval_size", c.get("eval_size", 0) or 0)):
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"input.{key}: expected 0 (whole images) or a size > 0; received {value!r}.")
  if not 0.0 <= flip <= 1.0:
    raise ValueError(f"input.flip_probability: expected a number in [0, 1]; received {flip!r}.")
  train = data.RandomSegmentationCrop(crop, flip, fill) if crop or flip else None
  eval_size = c.get("eval_size", 0) or 0
  return Inputs(
    transform=transform,
    train_record=train,
    eval_record=data.PadTo(eval_size, fill) if eval_size else None,
  )


# The segmenters need nothing but the images.
model_kwargs = no_model_kwargs


def _predict_step(state, batch, *, model, model_kwargs, axis_name=None):
  """Per-example rows for the predictions figure: the arg-max class of every pixel."""
  del axis_name
  logits = _logits(
    steps.apply_model(state, batch, model=model, model_kwargs=model_kwargs), "predictions"
  )
  return {
    "prediction": jnp.argmax(logits, -1).astype(jnp.int32),
    "labels": batch["labels"],
    "image": batch["image"][..., 0],
    "mask": batch["mask"],
  }


class Segmentation(evaluators.DeviceSums):
  """The confusion matrix of the whole split, summed on device batch by batch ([C, C] int32,
  so up to 2^31 pixels per cell), -> {prefix}pixel_accuracy, {prefix}mean_accuracy,
  {prefix}mean_iu, {prefix}fw_iu (research.evaluate.segmentation.metrics_from_confusion: the
  numbers of `segmentation_metrics` on all the split's pixels at once) and {prefix}loss (the
  mean cross-entropy over valid pixels). After the last step it draws the first
  `figure_images` (default 4; 0: none) images of the split: figures/predictions_{name}.png.
  """

  extra_keys = ("figure_images",)

  def __init__(self, spec, ctx):
    super().__init__(spec, ctx)
    self.figure_images = int(spec.get("figure_images", 4))
    if self.figure_images < 0:
      raise ValueError(
        f"evals: 'segmentation' figure_images: expected a count >= 0; received "
        f"{self.figure_images}."
      )
    self._predict = ctx.parallel.compile_eval(
      _predict_step, model=ctx.model, model_kwargs=ctx.model_kwargs
    )

  @staticmethod
  def sums(outputs, batch) -> dict:
    logits = _logits(outputs, "segmentation evaluator")
    labels = batch["labels"]
    rows = batch["mask"][:, None, None]  # padded rows of the last batch count nowhere
    ce, valid = _pixel_losses(logits, labels)
    counted = valid & rows
    return {
      "confusion": evaluate.confusion_matrix(
        labels, jnp.argmax(logits, -1), logits.shape[-1], ignore_label=IGNORE, mask=rows
      ),
      "loss_sum": jnp.where(counted, ce, 0.0).sum(),
      "pixels": counted.sum().astype(jnp.int32),
    }

  @staticmethod
  def summarize(totals, prefix: str) -> dict:
    confusion = np.asarray(totals["confusion"], np.int64)
    if not confusion.sum():
      raise ValueError("segmentation evaluator: the split has no labelled (not 255) pixels.")
    numbers = evaluate.metrics_from_confusion(confusion)
    out = {f"{prefix}{k}": v for k, v in numbers.items()}
    out[f"{prefix}loss"] = float(totals["loss_sum"]) / max(int(totals["pixels"]), 1)
    return out

  def run(self, state, *, final: bool) -> dict:
    numbers = super().run(state, final=final)
    if final and self.figure_images:
      batch = next(iter(self.batches()))
      rows = self.ctx.parallel.rows(self._predict(state, self.ctx.parallel.put_batch(batch)))
      if jax.process_index() == 0:
        keep = np.flatnonzero(rows["mask"])[: self.figure_images]
        names = getattr(self._source, "class_names", None) or self.ctx.class_names
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_")  # "test[:8]" -> "test_8"
        path = os.path.join(self.ctx.workdir, "figures", f"predictions_{stem}.png")
        draw_predictions(
          {k: rows[k][keep] for k in ("image", "labels", "prediction")},
          path,
          num_classes=self.ctx.num_classes,
          class_names=names,
        )
    return numbers


EVALUATORS = {"segmentation": Segmentation}


def default_evals(config: ConfigDict) -> list[ConfigDict]:
  """Mean IU and the other three numbers on the test split every `config.eval_every_steps`."""
  return [
    ConfigDict({"type": "segmentation", "split": "test", "every_steps": config.eval_every_steps})
  ]


def palette() -> np.ndarray:
  """uint8 [256, 3]: PASCAL VOC's colour map (research.data.voc_segmentation.COLOURS: class 0
  black, then the bits of the class id spread over red, green and blue), 255 (ignored) white
  for display."""
  colours = voc_segmentation.COLOURS.copy()
  colours[IGNORE] = 255
  return colours


def draw_predictions(rows: dict, path: str, *, num_classes: int, class_names=None) -> str:
  """A figure of rows {"image" [N, H, W] (one channel, any scale), "labels" [N, H, W],
  "prediction" [N, H, W]}: one row per image (image, ground truth, prediction), classes
  colour-coded by `palette`, with a legend of the classes that appear. Saved at `path`."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel

  colours = palette()
  n = len(rows["image"])
  fig = Figure(figsize=(7.5, 2.5 * max(n, 1) + 0.6))
  axes = fig.subplots(max(n, 1), 3, squeeze=False)
  for i in range(n):
    truth, pred = rows["labels"][i], rows["prediction"][i]
    right = (truth == pred)[truth != IGNORE].mean() if (truth != IGNORE).any() else float("nan")
    panels = (
      (rows["image"][i], "image", "gray"),
      (colours[np.clip(truth, 0, 255)], "ground truth", None),
      (colours[np.clip(pred, 0, 255)], f"prediction ({right:.1%} of pixels)", None),
    )
    for ax, (picture, title, cmap) in zip(axes[i], panels):
      ax.imshow(picture, cmap=cmap, interpolation="nearest")
      ax.set_title(title, fontsize=8)
      ax.axis("off")
  seen = np.union1d(np.unique(rows["labels"]), np.unique(rows["prediction"]))
  seen = [int(k) for k in seen if 0 <= k < num_classes]  # 255 (ignored) left out
  names = class_names or [str(k) for k in range(num_classes)]
  handles = [Patch(color=colours[k] / 255, label=names[k]) for k in seen]
  if handles:
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7)
  fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def figures(workdir: str) -> list[str]:
  """figures/learning_curves.png: train and test loss, the training batches' pixel accuracy
  and the evaluations' mean IU against steps; plus the evaluators' predictions_*.png."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  rows = read_metrics(workdir)
  train = [r for r in rows if r["split"] == "train"]
  evals = [r for r in rows if r["split"] != "train"]
  fig = Figure(figsize=(9, 3.5))
  ax1, ax2 = fig.subplots(1, 2)
  ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  ax2.plot(
    [r["step"] for r in train], [r["pixel_accuracy"] for r in train], label="train pixel acc."
  )
  keys = sorted({k for r in evals for k in r if k.endswith(("mean_iu", "_loss"))})
  for key in keys:
    points = [(r["step"], r[key]) for r in evals if key in r]
    ax = ax1 if key.endswith("_loss") else ax2
    ax.plot(*zip(*points), "o-", label=key)
  ax1.set(xlabel="step", ylabel="cross-entropy per pixel", title="loss", yscale="log")
  ax1.legend()
  ax2.set(xlabel="step", ylabel="fraction", title="pixel accuracy and mean IU", ylim=(0, 1))
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "figures", "learning_curves.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  return [path, *sorted(glob.glob(os.path.join(workdir, "figures", "predictions_*.png")))]
