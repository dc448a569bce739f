"""The classification task: image -> one label. Inputs, loss, evaluators and figures.

config.input describes the transforms (`input_fns`); config.loss names the loss
("classification", or "FAMILY.NAME_loss" beside a model's head, e.g. GoogLeNet's
auxiliary classifiers); config.evals lists evaluators of `EVALUATORS`, by default
accuracy on the test split every `eval_every_steps`.
"""

from __future__ import annotations

import importlib
import os

import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from research import models
from research.data import crops, transforms
from research.evaluate import classification as evaluate
from research.train import evaluators
from research.train.steps import no_model_kwargs
from research.train.tasks import Inputs
from research.train.writer import read_metrics


def _logits(outputs, where: str):
  logits, _ = outputs
  if logits is None:
    raise ValueError(
      f"{where}: the model returned no logits: it was built headless (num_classes=0, a "
      "backbone); set num_classes (or config.num_classes) to train or evaluate a classifier."
    )
  return logits


def classification_loss(outputs, batch) -> dict:
  """Softmax cross-entropy; `outputs` = (logits [B, K], out), batch["label"] [B] int.

  Returns {"loss": mean cross-entropy, "accuracy": fraction correct}, in float32
  whatever the logits' dtype (bfloat16 models).
  """
  logits = _logits(outputs, "classification_loss").astype(jnp.float32)
  labels = batch["label"]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
    "loss": loss.mean(),
    "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean(),
  }


def resolve_loss(name: str):
  """ "classification" -> classification_loss; "FAMILY.NAME_loss" -> the loss beside a model's
  head (e.g. "googlenet.googlenet_loss", which adds the auxiliary classifiers' terms)."""
  if name == "classification":
    return classification_loss
  family, _, fn = name.rpartition(".")
  if family in models.families():
    module = importlib.import_module(f"research.models.{family}")
    if fn.endswith("_loss") and callable(getattr(module, fn, None)):
      return getattr(module, fn)
  losses = ["classification"] + [
    f"{f}.{k}"
    for f in models.families()
    for k, v in vars(importlib.import_module(f"research.models.{f}")).items()
    if k.endswith("_loss") and callable(v)
  ]
  raise ValueError(f"loss: unknown loss {name!r}; expected one of {losses}.")


def loss_fn(config: ConfigDict):
  return resolve_loss(config.get("loss", "classification"))


def input_fns(config: ConfigDict, num_classes: int) -> Inputs:
  """The batch transform, the random (training-only) transform and the crops that
  `config.input` describes."""
  c = config.input
  optional = lambda key: tuple(c[key]) if c.get(key) is not None else None
  transform = transforms.ClassificationTransform(
    num_classes=num_classes,
    pad=c.get("pad", 0),
    value_range=tuple(c.get("value_range", (0.0, 1.0))),
    mean=optional("mean"),
    std=optional("std"),
    channels=c.get("channels"),
    upscale=c.get("upscale", 1),
  )
  randoms = []
  if c.get("random_shift", 0):
    randoms.append(transforms.RandomShift(c.random_shift, fill=transform.background))
  if c.get("random_flip", False):
    randoms.append(transforms.RandomFlip())
  if c.get("pca_lighting", 0.0):
    randoms.append(crops.PCALighting(c.pca_lighting, std=tuple(c.get("std") or (1.0,) * 3)))
  if c.get("noise_std", 0.0):
    randoms.append(transforms.GaussianNoise(c.noise_std, c.get("noise_probability", 1.0)))
  random_transform = transforms.Chain(tuple(randoms)) if randoms else None
  train_crop, eval_crop = _crops(c)
  return Inputs(transform, random_transform, train_crop, eval_crop)


def _crops(c: ConfigDict):
  """(train record transform, eval record transform) for photographs of varying size."""
  kind = c.get("crop", "none")
  if kind == "none":
    return None, None
  size, resize = c.get("crop_size", 224), c.get("resize", 256)
  eval_crop = crops.ResizeCenterCrop(size, resize)
  if kind == "random_resized":
    return crops.RandomResizedCrop(size), eval_crop
  if kind == "scale_jitter":
    s_min, s_max = c.get("scale_range", (resize, resize))
    return crops.ScaleJitterCrop(size, s_min, s_max), eval_crop
  raise ValueError(
    f"input.crop: expected one of ['none', 'random_resized', 'scale_jitter']; received {kind!r}."
  )


class Accuracy(evaluators.DeviceSums):
  """Top-1 and top-5 accuracy and mean cross-entropy over the whole split:
  {prefix}accuracy, {prefix}top5_accuracy, {prefix}loss, {prefix}examples."""

  @staticmethod
  def sums(outputs, batch) -> dict:
    return evaluate.eval_counts((_logits(outputs, "accuracy evaluator"), None), batch)

  summarize = staticmethod(evaluate.summarize)


class Confusion(evaluators.HostEvaluator):
  """The confusion matrix of the whole split (rows: true class, columns: predicted):
  {prefix}mean_class_accuracy (the mean of the per-class recalls, what an unbalanced
  split hides), {prefix}worst_class_accuracy, and after the last step
  figures/confusion_{name}.png."""

  @staticmethod
  def predict(outputs, batch) -> dict:
    logits = _logits(outputs, "confusion evaluator")
    return {"prediction": jnp.argmax(logits, -1), "label": batch["label"], "mask": batch["mask"]}

  def reset(self) -> None:
    k = self.ctx.num_classes
    self.matrix = np.zeros((k, k), np.int64)

  def update(self, rows: dict) -> None:
    keep = rows["mask"].astype(bool)
    np.add.at(self.matrix, (rows["label"][keep], rows["prediction"][keep]), 1)

  def result(self, final: bool) -> dict:
    support = self.matrix.sum(1)
    if not support.sum():
      raise ValueError(f"confusion evaluator: the split {self.split!r} has no examples.")
    recall = np.diag(self.matrix)[support > 0] / support[support > 0]
    if final:
      self._plot()
    return {
      f"{self.prefix}mean_class_accuracy": float(recall.mean()),
      f"{self.prefix}worst_class_accuracy": float(recall.min()),
    }

  def _plot(self) -> None:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    k = self.ctx.num_classes
    fig = Figure(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k))
    ax = fig.subplots()
    ax.imshow(self.matrix, cmap="Blues")
    if k <= 20:
      for (i, j), n in np.ndenumerate(self.matrix):
        big = n > self.matrix.max() / 2
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="w" if big else "k")
    names = self.ctx.class_names or [str(i) for i in range(k)]
    if k <= 40:
      ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0)
      ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion ({self.split})")
    fig.tight_layout()
    fig.savefig(self.figure_path("confusion"), dpi=120)


# The classifiers need nothing but the images.
model_kwargs = no_model_kwargs

EVALUATORS = {"accuracy": Accuracy, "confusion": Confusion}


def default_evals(config: ConfigDict) -> list[ConfigDict]:
  """Accuracy on the test split every `config.eval_every_steps` (0: at the end)."""
  return [ConfigDict({"type": "accuracy", "split": "test", "every_steps": config.eval_every_steps})]


def figures(workdir: str) -> list[str]:
  """figures/learning_curves.png: train loss and test accuracy against steps."""
  # A bare Figure, not pyplot: no global backend switch, so notebooks keep inline plots.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  rows = read_metrics(workdir)
  train = [r for r in rows if r["split"] == "train"]
  test = [r for r in rows if r["split"] == "test" and "test_loss" in r]
  fig = Figure(figsize=(9, 3.5))
  ax1, ax2 = fig.subplots(1, 2)
  ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  if test:
    ax1.plot([r["step"] for r in test], [r["test_loss"] for r in test], "o-", label="test")
  ax1.set(xlabel="step", ylabel="cross-entropy", title="loss")
  ax1.legend()
  ax2.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train (batch)")
  if test:
    ax2.plot([r["step"] for r in test], [r["test_accuracy"] for r in test], "o-", label="test")
  ax2.set(xlabel="step", ylabel="accuracy", title="accuracy")
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "figures", "learning_curves.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  return [path]
