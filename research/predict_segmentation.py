"""The segmentation half of `python -m research.predict`: a trained segmenter's label map of
one image, its classes, and a figure.

`research.predict.predict` sends here the runs whose config.task is "segmentation" (an FCN
of experiments/fcn_voc2012.py, ...). The image is read with the data set's channels
(`research.predict.load_image`), goes through the task's evaluation transform
(`research.data.segmentation.SegmentationTransform`: channels, normalization) as a batch of
one, unpadded and unresized: a segmenter's logits [1, H, W, C] are at its input's size
(FCN's pad 100 takes any size). The arg-max class of every pixel is the label map, uint8
[H, W] in the original image's pixels, saved as a palette-mode PNG with PASCAL VOC's
colours (`research.train.tasks.segmentation.palette`: a viewer shows the colours, PIL
reads back the class ids). The figure blends the classes' colours over the image (alpha
0.5, the class named "background" left clear) beside the plain label map, with a legend of
the classes present.

From Python: `Segmenter.load(workdir)` keeps a restored segmenter for many images
(`segmenter(image)` -> label map; `segmenter.logits(image)` -> float32 [H, W, C]).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from ml_collections import ConfigDict

from research.data import segmentation as segmentation_data
from research.predict import (
  SEGMENTATION_TASKS,
  RunParts,
  _compiled,
  build_model,
  default_figure,
  load_run_config,
  read_run_image,
  restore_variables,
)

IGNORE = segmentation_data.IGNORE  # not a class, so at most 255 classes


@dataclasses.dataclass
class Segmenter:
  """A restored segmenter of a workdir; `segmenter(image)` -> the label map of one image.

  transform: the task's batch transform (`SegmentationTransform`); model_kwargs the task's;
  channels: the data set's image channels (1 or 3); class_names by label.
  """

  workdir: str
  step: int
  config: ConfigDict
  model: object
  variables: dict
  transform: object
  model_kwargs: object
  class_names: list[str]
  channels: int

  @classmethod
  def load(cls, workdir: str, step: int | None = None) -> Segmenter:
    """The segmenter of `workdir` at checkpoint `step` (None: the newest)."""
    return cls._build(workdir, load_run_config(workdir, SEGMENTATION_TASKS), step)

  @classmethod
  def _build(cls, workdir: str, config: ConfigDict, step: int | None) -> Segmenter:
    parts = RunParts.of(config)
    if not 1 <= parts.num_classes <= IGNORE:
      raise ValueError(
        f"--workdir: a label map holds class ids 0..254 (255 is 'ignored'); the run of "
        f"{workdir!r} has {parts.num_classes} classes."
      )
    transform = parts.inputs.transform
    if not isinstance(transform, segmentation_data.SegmentationTransform):
      raise ValueError(
        f"--workdir: predict needs a task whose transform is a SegmentationTransform; task "
        f"{config.get('task')!r} gives {type(transform).__name__}."
      )
    step, variables = restore_variables(workdir, step)
    return cls(
      workdir=os.path.abspath(workdir),
      step=step,
      config=config,
      model=build_model(config, parts.num_classes),
      variables=variables,
      transform=transform,
      model_kwargs=parts.task.model_kwargs,
      class_names=parts.class_names,
      channels=parts.channels,
    )

  def logits(self, image: np.ndarray) -> np.ndarray:
    """image: uint8 [H, W, channels] (or [H, W] for one channel) -> float32 [H, W, C]."""
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.ndim != 3 or image.dtype != np.uint8 or image.shape[-1] != self.channels:
      raise ValueError(
        f"image: expected uint8 [H, W, {self.channels}] (the data set's channels; "
        f"research.predict.load_image reads a file so); received {image.dtype} of shape "
        f"{image.shape}."
      )
    height, width = image.shape[:2]
    batch = self.transform({"image": image[None], "labels": np.zeros((1, height, width), np.int32)})
    kwargs = self.model_kwargs(batch, train=False)
    logits, _ = _compiled(self.model)(self.variables, batch["image"], **kwargs)
    if logits is None or logits.ndim != 4 or tuple(logits.shape[:3]) != (1, height, width):
      raise ValueError(
        f"--workdir: expected the segmenter {self.config.model!r} to return logits "
        f"[1, {height}, {width}, C] at its input's size; received "
        f"{None if logits is None else tuple(logits.shape)}."
      )
    return np.asarray(logits[0], np.float32)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """image: uint8 [H, W, channels] -> the arg-max class of each pixel, uint8 [H, W]."""
    return np.argmax(self.logits(image), axis=-1).astype(np.uint8)


def class_table(label_map: np.ndarray, names: list[str]) -> list[dict]:
  """label_map: integer [H, W] -> [{"label", "class_name", "pixels", "fraction"}] of the
  classes present, most pixels first (ties: the lower label), fractions to 4 decimals."""
  label_map = np.asarray(label_map)
  counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(names))
  present = sorted(np.flatnonzero(counts), key=lambda k: (-counts[k], k))
  return [
    {
      "label": int(k),
      "class_name": names[k] if k < len(names) else str(k),
      "pixels": int(counts[k]),
      "fraction": round(float(counts[k]) / label_map.size, 4),
    }
    for k in present
  ]


def save_label_map(label_map: np.ndarray, path: str) -> str:
  """label_map: uint8 [H, W] class ids -> a palette-mode PNG at `path` (parent directories
  created) with PASCAL VOC's colours; returns `path`. PIL reads the ids back."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from research.train.tasks.segmentation import palette  # pylint: disable=import-outside-toplevel

  image = Image.fromarray(np.asarray(label_map, np.uint8))  # mode "L"
  image.putpalette(palette().ravel().tolist())  # -> mode "P", same indices
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path, format="PNG")
  return path


def background_label(names: list[str]) -> int | None:
  """The label of the class named "background" (left clear in the overlay), or None."""
  lowered = [n.lower() for n in names]
  return lowered.index("background") if "background" in lowered else None


def overlay(
  image: np.ndarray, label_map: np.ndarray, background: int | None = 0, alpha: float = 0.5
) -> np.ndarray:
  """image uint8 [H, W, C] (C = 1 or 3), label_map integer [H, W] -> uint8 [H, W, 3]: each
  pixel's class colour (VOC's palette) blended over the image with `alpha`, pixels of class
  `background` left as they are."""
  from research.train.tasks.segmentation import palette  # pylint: disable=import-outside-toplevel

  image, label_map = np.asarray(image), np.asarray(label_map)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[:2] != label_map.shape:
    raise ValueError(
      f"overlay: expected label_map [H, W] = {list(image.shape[:2])}, the image's size; "
      f"received {label_map.shape}."
    )
  rgb = np.broadcast_to(image[..., :3], (*image.shape[:2], 3)).astype(np.float32)
  colours = palette()[np.clip(label_map, 0, 255)].astype(np.float32)
  tinted = label_map != background if background is not None else np.ones(label_map.shape, bool)
  blended = np.where(tinted[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw(
  image: np.ndarray,
  label_map: np.ndarray,
  classes: list[dict],
  path: str,
  *,
  background: int | None = 0,
  title: str | None = None,
) -> str:
  """The figure at `path` (PNG, parent directories created): `overlay(image, label_map)`
  beside the label map in VOC's colours, a legend of `classes` (`class_table`'s rows) with
  their share of the pixels below; returns `path`."""
  # pylint: disable=import-outside-toplevel
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  from research.train.tasks.segmentation import palette

  h, w = np.asarray(label_map).shape
  panel = 4.0 / max(h, w)  # each panel's longer side 4 inches
  rows = (len(classes) + 5) // 6  # the legend's rows, six classes a row
  legend = 0.25 * rows + 0.2
  fig = Figure(figsize=(2 * max(w * panel, 1.5) + 0.3, max(h * panel, 1.5) + 0.4 + legend))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  colours = palette()
  panels = (
    (overlay(image, label_map, background), "prediction over the image"),
    (colours[np.asarray(label_map)], "label map"),
  )
  for ax, (picture, name) in zip(axes, panels):
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(name, fontsize=8)
    ax.set_axis_off()
  handles = [
    Patch(color=colours[c["label"]] / 255, label=f"{c['class_name']} {c['fraction']:.1%}")
    for c in classes
  ]
  if handles:
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7)
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout(rect=(0, legend / fig.get_figheight(), 1, 1))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def predict(
  workdir: str,
  image_path: str,
  config: ConfigDict,
  *,
  out: str | None = None,
  label_map: str | None = None,
  step: int | None = None,
) -> dict:
  """Runs the segmenter of `workdir` (its config.json already read: `config`) on the image
  file at `image_path`; saves the label map's PNG at `label_map` (None: beside the figure,
  <figure stem>_labels.png) and the figure at `out` (None: workdir/figures/predict_<image
  stem>.png); returns {"image", "workdir", "step", "figure", "label_map", "classes"}."""
  image = read_run_image(workdir, config, image_path)
  out = os.path.expanduser(out or default_figure(workdir, image_path))
  labels_path = os.path.expanduser(label_map or os.path.splitext(out)[0] + "_labels.png")
  if os.path.abspath(labels_path) == os.path.abspath(out):
    raise ValueError(
      f"--label-map: expected a path other than the figure's (--out); both are {out!r}."
    )
  segmenter = Segmenter._build(workdir, config, step)
  labels = segmenter(image)
  classes = class_table(labels, segmenter.class_names)
  save_label_map(labels, labels_path)
  draw(
    image,
    labels,
    classes,
    out,
    background=background_label(segmenter.class_names),
    title=f"{config.model}, step {segmenter.step}",
  )
  return {
    "image": os.path.abspath(image_path),
    "workdir": segmenter.workdir,
    "step": segmenter.step,
    "figure": os.path.abspath(out),
    "label_map": os.path.abspath(labels_path),
    "classes": classes,
  }
