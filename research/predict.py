"""Command line: run the trained detector or segmenter of a workdir on one image.

    python -m research.predict --workdir=DIR --image=PATH [--out=PNG] [--step=N] \
        [--score-threshold=0.5] [--label-map=PNG]

The run's `config.json` says what it trained (`config.task`): a detector ("detection") or a
segmenter ("segmentation"); any other task is an error naming it. Both print JSON to stdout
and draw a PNG, by default `DIR/figures/predict_<image stem>.png`; the checkpoint is the
newest, or `--step`.

Detection prints {"image", "workdir", "step" (the checkpoint's), "score_threshold",
"figure", "detections": [{"box": [x1, y1, x2, y2], "label", "class_name", "score"}, ...]},
best first, with score >= --score-threshold (default 0.5), boxes in the original image's
pixels (pixel edges: a box over columns 0..9 has x1 = 0, x2 = 10) to 2 decimals, scores to
4; a Mask R-CNN's detections also carry "mask", the instance mask in the original image as
COCO's run-length encoding {"size": [H, W], "counts"} (`decode_mask` gives the array). The
figure shows the boxes, masks, class names and scores. Every detector of the detection task
works: the run's config gives the model (`research.train.loop.build_model`), the data set
(its classes, its images' channels) and the task's evaluation transform
(`research.data.detection.DetectionTransform`: resize into the size x size canvas,
normalize). The model's evaluation call returns `(detections, out)` with detections
{"boxes" [N, D, 4] in the resized image's pixels, "scores", "labels" (0-based), "valid",
optionally "mask_probs" [N, D, M, M]} (the `research.train.evaluators.DetectionAP`
contract), and boxes go back to the original image by original_size / image_size, where
masks are pasted at them.

Segmentation (an FCN of experiments/fcn_voc2012.py, ...; `research.predict_segmentation`)
prints {"image", "workdir", "step", "figure", "label_map", "classes": [{"label",
"class_name", "pixels", "fraction"}, ...]}: the arg-max class of every pixel of the original
image (the task's `SegmentationTransform`, no resizing or padding: the segmenters' logits
are at the input's size), saved as a palette-mode PNG with PASCAL VOC's colours at
`label_map` (--label-map, default next to the figure: `<figure stem>_labels.png`), and the
classes present, most pixels first. The figure blends the classes' colours over the image
(the background left clear) beside the plain label map, with a legend of the classes
present. --score-threshold means nothing there and is ignored; --label-map is an error for
a detector.

From Python: `predict(workdir, image_path)` returns the same dict; `Detector.load(workdir)`
keeps a restored detector for many images (`detector(image)`, image uint8 [H, W, C]), as
`research.predict_segmentation.Segmenter.load(workdir)` keeps a segmenter
(`segmenter(image)` -> the label map uint8 [H, W]).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import sys

import numpy as np
from ml_collections import ConfigDict

log = logging.getLogger(__name__)

# config.task values whose models are detectors with the contract above.
DETECTION_TASKS = ("detection",)
# config.task values whose models are segmenters: (logits [B, H, W, C] at the input's size, out).
SEGMENTATION_TASKS = ("segmentation",)
TASKS = DETECTION_TASKS + SEGMENTATION_TASKS
# What a run of each task is, for the error messages.
_KINDS = {"detection": "detector", "segmentation": "segmenter"}


def load_config(workdir: str, tasks: tuple[str, ...] = TASKS) -> ConfigDict:
  """The run's config.json; FileNotFoundError when `workdir` is not a run's directory,
  ValueError when its task is not one of `tasks` (default: the detection and segmentation
  tasks)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
      f"--workdir: expected the directory of a training run (config.json, checkpoints/); "
      f"{workdir!r} does not exist."
    )
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"--workdir: expected the directory of a training run with config.json; {workdir!r} "
      "has none (is it the workdir passed to research.main?)."
    )
  with open(path) as f:
    config = ConfigDict(json.load(f))
  task = config.get("task", "classification")
  if task not in tasks:
    kinds = " or ".join(dict.fromkeys(_KINDS.get(t, t) for t in tasks))
    raise ValueError(
      f"--workdir: predict runs a trained {kinds}, a run of config.task in {list(tasks)}; "
      f"{workdir!r} holds a run of task {task!r}."
    )
  return config


def _manager(workdir: str):
  """A read-only orbax manager of `workdir/checkpoints` (the loop's Checkpointer layout)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f"--workdir: expected a checkpoint in {directory}; the directory does not exist (did "
      "the run save one? It saves every config.checkpoint_every_steps)."
    )
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager saves nothing
  try:
    manager = ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )
  finally:
    absl.setLevel(level)
  if not manager.all_steps():
    manager.close()
    raise FileNotFoundError(
      f"--workdir: expected a checkpoint in {directory}; found none (did the run save one? "
      "It saves every config.checkpoint_every_steps)."
    )
  return manager


def restore_variables(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, {"params", "batch_stats" where the model has them}) of checkpoint `step` of
  `workdir`, or of the newest readable one. Only the model's variables are read, not the
  optimizer's state, onto the first device."""
  manager = _manager(workdir)
  try:
    return _restore(manager, workdir, step)
  finally:
    manager.close()


def _restore(manager, workdir: str, step: int | None) -> tuple[int, dict]:
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  steps = sorted(manager.all_steps())
  if step is not None and step not in steps:
    raise FileNotFoundError(
      f"--step: expected one of the checkpoints of {workdir!r}, {steps}; received {step}."
    )
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  error = None
  for candidate in [step] if step is not None else reversed(steps):
    try:
      tree = manager.item_metadata(candidate)["state"].tree
      wanted = {k: tree[k] for k in ("params", "batch_stats") if tree.get(k)}
      abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), wanted
      )
      restored = manager.restore(
        candidate,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
          )
        ),
      )
      return candidate, dict(restored["state"])
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for unreadable files (see checkpoints.py).
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      if step is not None:
        raise ValueError(
          f"--step: checkpoint {step} of {workdir!r} cannot be read ({reason})."
        ) from e
      log.warning(
        "checkpoint %d of %s cannot be read (%s); skipping it", candidate, workdir, reason
      )
      error = reason
  raise ValueError(
    f"--workdir: none of the checkpoints {steps} of {workdir!r} can be read ({error})."
  )


def load_image(path: str, channels: int) -> np.ndarray:
  """The image file at `path` as uint8 [H, W, channels] (1: greyscale, else RGB), as the
  data set's records hold images; FileNotFoundError / ValueError naming --image."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"--image: expected an image file (PNG, JPEG, ...); {path!r} "
      f"{'is a directory' if os.path.isdir(path) else 'does not exist'}."
    )
  try:
    with Image.open(path) as image:
      image = image.convert("L" if channels == 1 else "RGB")
      pixels = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    # PIL: UnidentifiedImageError (an OSError) for what is not an image, OSError for a
    # truncated one, SyntaxError or ValueError for some malformed headers.
    raise ValueError(
      f"--image: expected an image file PIL can read (PNG, JPEG, ...); {path!r} cannot be "
      f"read ({type(e).__name__}: {e})."
    ) from e
  return pixels.reshape(*pixels.shape[:2], -1)


def to_original(boxes, image_size, original_size) -> np.ndarray:
  """Boxes [..., 4] (x1, y1, x2, y2) in the resized image's pixels (image_size = (h, w)
  inside the canvas) -> the original image's pixels (original_size = (H, W)), clipped to it."""
  (h, w), (big_h, big_w) = np.asarray(image_size, float), np.asarray(original_size, float)
  scaled = np.asarray(boxes, np.float64) * np.array([big_w / w, big_h / h] * 2)
  return np.clip(scaled, 0, np.array([big_w, big_h] * 2))


def _label_names(feature) -> list[str] | None:
  """The names of the first ClassLabel inside a TFDS feature (objects/label, label)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  if isinstance(feature, tfds.features.ClassLabel):
    names = list(feature.names)
    return None if names == [str(i) for i in range(len(names))] else names
  children = getattr(feature, "_feature_dict", None) or {}
  if isinstance(feature, tfds.features.Sequence):
    children = {"feature": feature.feature}
  for key in ("objects", "label", "labels", *children):
    if key in children:
      names = _label_names(children[key])
      if names:
        return names
  return None


def _tfds_class_names(config: ConfigDict, spec) -> list[str] | None:
  """The label names of a prepared TFDS data set's own metadata (voc: "aeroplane", ...), or
  None; the offline data sets of this package name none (digit_scenes' labels are digits)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  if getattr(spec, "builder", None):
    return None
  data_dir = os.path.expanduser(config.get("data_dir") or tfds.core.constants.DATA_DIR)
  root = os.path.join(data_dir, *spec.name.split("/"))
  try:
    versions = sorted(
      (v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "features.json"))),
      key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")),
    )
    if not versions:
      return None
    return _label_names(tfds.builder_from_directory(os.path.join(root, versions[-1])).info.features)
  except Exception as e:  # pylint: disable=broad-except
    # Names are a nicety: a data set whose metadata cannot be read falls back to numbers.
    log.info("no class names from %s's TFDS metadata (%s)", spec.name, e)
    return None


def class_names(config: ConfigDict, spec, num_classes: int) -> list[str]:
  """Names by label: the data set spec's (coco_format: its categories), else its TFDS
  metadata's, else the labels as text ("0".."9" for digit_scenes)."""
  names = list(spec.class_names or _tfds_class_names(config, spec) or [])
  return [names[i] if i < len(names) else str(i) for i in range(num_classes)]


def _tuples(value):
  """`value` with every list, at any depth, a tuple."""
  if isinstance(value, list | tuple):
    return tuple(_tuples(v) for v in value)
  return value


def build_model(config: ConfigDict, num_classes: int):
  """`research.train.loop.build_model` of a config read back from config.json, where the
  tuples of `config.model_kwargs` came back as lists: they are tuples again, so that the
  module is hashable (`_compiled`'s cache key) as the one trained was."""
  from research.train import loop  # pylint: disable=import-outside-toplevel

  model = loop.build_model(config, num_classes)
  fields = (f.name for f in dataclasses.fields(model) if f.name not in ("parent", "name"))
  lists = {k: _tuples(getattr(model, k)) for k in fields if isinstance(getattr(model, k), list)}
  return model.clone(**lists) if lists else model


@functools.lru_cache(maxsize=4)
def _compiled(model):
  """The jitted evaluation call of `model` (a hashable Flax module), shared by every image and
  every load of the same model in this process."""
  import jax  # pylint: disable=import-outside-toplevel

  return jax.jit(functools.partial(model.apply, train=False))


def read_run_image(workdir: str, config: ConfigDict, image_path: str) -> np.ndarray:
  """The image file at `image_path` as uint8 [H, W, C] with the run's data set's channels,
  after checking that the run has a checkpoint (an error before the image is read)."""
  from research.data import sources  # pylint: disable=import-outside-toplevel

  _manager(workdir).close()
  spec, _ = sources.from_config(config)
  return load_image(image_path, int(spec.image_shape[-1] or 3))


def load_run_config(workdir: str, tasks: tuple[str, ...]) -> ConfigDict:
  """`load_config(workdir, tasks)`, after checking that the run has a checkpoint: an error
  before anything is built."""
  config = load_config(workdir, tasks)
  _manager(workdir).close()
  return config


@dataclasses.dataclass(frozen=True)
class RunParts:
  """What a run's config gives every predictor: its task module, data set spec, class count
  (config.num_classes or the spec's), the task's `Inputs` (transforms), class names by label
  and the images' channels (1 or 3)."""

  task: object
  spec: object
  num_classes: int
  inputs: object
  class_names: list[str]
  channels: int

  @classmethod
  def of(cls, config: ConfigDict) -> RunParts:
    # pylint: disable=import-outside-toplevel
    from research.data import sources
    from research.train import tasks

    task = tasks.resolve(config.get("task", "classification"))
    spec, _ = sources.from_config(config)
    num_classes = config.get("num_classes") or spec.num_classes
    return cls(
      task=task,
      spec=spec,
      num_classes=num_classes,
      inputs=task.input_fns(config, num_classes),
      class_names=class_names(config, spec, num_classes),
      channels=int(spec.image_shape[-1] or 3),
    )


@dataclasses.dataclass
class Detector:
  """A restored detector of a workdir; `detector(image)` -> detections of one image.

  transform: the task's schema-record transform (`DetectionTransform`); batch_transform and
  model_kwargs the task's; channels: the data set's image channels (1 or 3).
  """

  workdir: str
  step: int
  config: ConfigDict
  model: object
  variables: dict
  transform: object
  batch_transform: object
  model_kwargs: object
  class_names: list[str]
  channels: int

  @classmethod
  def load(cls, workdir: str, step: int | None = None) -> Detector:
    """The detector of `workdir` at checkpoint `step` (None: the newest)."""
    return cls._build(workdir, load_run_config(workdir, DETECTION_TASKS), step)

  @classmethod
  def _build(cls, workdir: str, config: ConfigDict, step: int | None) -> Detector:
    from research.data import detection as detection_data  # pylint: disable=import-outside-toplevel

    parts = RunParts.of(config)
    # A user's image is a schema record: it goes to the transform inside the task's
    # eval_record (which would also drop masks).
    transform = getattr(parts.inputs.eval_record, "transform", parts.inputs.eval_record)
    if not isinstance(transform, detection_data.DetectionTransform):
      raise ValueError(
        f"--workdir: predict needs a task whose eval_record holds a DetectionTransform; task "
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
      batch_transform=parts.inputs.transform,
      model_kwargs=parts.task.model_kwargs,
      class_names=parts.class_names,
      channels=parts.channels,
    )

  def __call__(self, image: np.ndarray, score_threshold: float = 0.5) -> list[dict]:
    """image: uint8 [H, W, C] -> [{"box", "label", "class_name", "score"}], best first, with
    score >= score_threshold, boxes in the image's pixels."""
    image = np.asarray(image)
    record = {
      "image": image,
      "boxes": np.zeros((0, 4), np.float32),
      "labels": np.zeros((0,), np.int32),
    }
    batch = self.batch_transform(
      {k: np.asarray(v)[None] for k, v in self.transform(record).items()}
    )
    kwargs = self.model_kwargs(batch, train=False)
    detections, _ = _compiled(self.model)(self.variables, batch["image"], **kwargs)
    boxes = np.asarray(detections["boxes"][0], np.float32)
    scores = np.asarray(detections["scores"][0], np.float32)
    labels = np.asarray(detections["labels"][0])
    keep = np.asarray(detections["valid"][0], bool) & (scores >= score_threshold)
    boxes = to_original(boxes, batch["image_size"][0], batch["original_size"][0])
    order = sorted(np.flatnonzero(keep), key=lambda i: -scores[i])
    masks = None
    if "mask_probs" in detections and order:
      # Mask R-CNN: each mask pasted at its box in the original image (torchvision's).
      from research.detection.mask_head import (  # pylint: disable=import-outside-toplevel
        paste_masks_in_image,
      )

      probs = np.asarray(detections["mask_probs"][0], np.float32)[order]
      masks = paste_masks_in_image(probs, boxes[order].astype(np.float32), image.shape[:2])
    out = []
    for j, i in enumerate(order):
      label = int(labels[i])
      name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
      out.append(
        {
          "box": [round(float(v), 2) for v in boxes[i]],
          "label": label,
          "class_name": name,
          "score": round(float(scores[i]), 4),
        }
      )
      if masks is not None:
        out[-1]["mask"] = encode_mask(masks[j] >= 0.5)
    return out


def encode_mask(mask: np.ndarray) -> dict:
  """A binary mask [H, W] -> COCO's run-length encoding {"size": [H, W], "counts": str}."""
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel

  rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
  return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
  """`encode_mask`'s output -> the bool mask [H, W]."""
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel

  return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}) > 0


def draw(image: np.ndarray, detections: list[dict], path: str, title: str | None = None) -> str:
  """`image` (uint8 [H, W, C]) with each detection's box, class name and score, as a PNG at
  `path` (parent directories created); returns `path`."""
  # pylint: disable=import-outside-toplevel
  from matplotlib import colormaps
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle

  image = np.asarray(image)
  h, w = image.shape[:2]
  inches = 6.0 / max(h, w)  # the longer side 6 inches, 600 pixels at dpi 100
  fig = Figure(figsize=(max(w * inches, 2.0), max(h * inches, 2.0)))
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0, 0, 1, 1))
  grey = image.shape[-1] == 1
  # Pixel edges: pixel (row i, column j) covers [j, j + 1) x [i, i + 1), as the boxes do.
  ax.imshow(
    image[..., 0] if grey else image,
    cmap="gray" if grey else None,
    vmin=0,
    vmax=255,
    extent=(0, w, h, 0),
    interpolation="nearest",
  )
  colors = colormaps["tab10"]
  for d in reversed(detections):  # the best drawn last, on top
    x1, y1, x2, y2 = d["box"]
    color = colors(d["label"] % 10)
    if "mask" in d:  # Mask R-CNN's instance mask, tinted in the box's colour
      tint = np.zeros((h, w, 4), np.float32)
      tint[decode_mask(d["mask"])] = (*color[:3], 0.45)
      ax.imshow(tint, extent=(0, w, h, 0), interpolation="nearest")
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))
    ax.text(
      x1,
      y1,
      f"{d['class_name']} {d['score']:.2f}",
      color="white",
      fontsize=8,
      va="bottom",
      clip_on=True,
      bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
    )
  if title:
    ax.text(
      2,
      h - 2,
      title,
      color="white",
      fontsize=7,
      va="bottom",
      bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"},
    )
  ax.set(xlim=(0, w), ylim=(h, 0))
  ax.set_axis_off()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def default_figure(workdir: str, image_path: str) -> str:
  """workdir/figures/predict_<image stem>.png: where the figure goes without --out."""
  stem = os.path.splitext(os.path.basename(image_path))[0]
  return os.path.join(workdir, "figures", f"predict_{stem}.png")


def predict(
  workdir: str,
  image_path: str,
  *,
  out: str | None = None,
  score_threshold: float | None = None,
  step: int | None = None,
  label_map: str | None = None,
) -> dict:
  """Runs the detector or segmenter of `workdir` (by its config.task) on the image file at
  `image_path`, draws the PNG at `out` (None: workdir/figures/predict_<image stem>.png);
  returns the JSON-able result (module docstring).

  score_threshold: detection only (None: 0.5); a segmentation run ignores it, a label map
  has no scores. label_map: segmentation only, where its palette PNG goes (None: beside
  `out`, <stem>_labels.png); a ValueError for a detector.
  """
  workdir, image_path = os.path.expanduser(workdir), os.path.expanduser(image_path)
  config = load_config(workdir)
  task = config.get("task", "classification")
  if task in SEGMENTATION_TASKS:
    if score_threshold is not None:
      log.info("--score-threshold: ignored, a segmentation run's label map has no scores")
    from research import predict_segmentation  # pylint: disable=import-outside-toplevel

    return predict_segmentation.predict(
      workdir, image_path, config, out=out, label_map=label_map, step=step
    )
  if label_map is not None:
    raise ValueError(
      f"--label-map: only a segmentation run writes a label map; {workdir!r} holds a run of "
      f"task {task!r} (leave --label-map out)."
    )
  score_threshold = 0.5 if score_threshold is None else score_threshold
  if not isinstance(score_threshold, int | float) or not math.isfinite(score_threshold):
    raise ValueError(
      f"--score-threshold: expected a finite number (scores lie in [0, 1]); received "
      f"{score_threshold!r}."
    )
  image = read_run_image(workdir, config, image_path)
  detector = Detector._build(workdir, config, step)
  detections = detector(image, score_threshold)
  out = os.path.expanduser(out or default_figure(workdir, image_path))
  draw(image, detections, out, title=f"{config.model}, step {detector.step}")
  return {
    "image": os.path.abspath(image_path),
    "workdir": detector.workdir,
    "step": detector.step,
    "score_threshold": score_threshold,
    "figure": os.path.abspath(out),
    "detections": detections,
  }


def to_json(result: dict) -> str:
  """`result` as indented JSON, each list of dicts ("detections", "classes") one item a
  line."""
  lines = []
  for key, value in result.items():
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
      rows = ",\n".join(f"    {json.dumps(v)}" for v in value)
      lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
    else:
      lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
  return "{\n" + ",\n".join(lines) + "\n}"


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m research.predict", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--workdir", required=True, help="the workdir of a detection or segmentation run"
  )
  parser.add_argument("--image", required=True, help="the image file (PNG, JPEG, ...)")
  parser.add_argument(
    "--out", default=None, help="the PNG to draw (default: WORKDIR/figures/predict_STEM.png)"
  )
  parser.add_argument(
    "--score-threshold",
    type=float,
    default=None,
    help="detection: keep detections scoring at least this (default 0.5); segmentation: "
    "ignored (a label map has no scores)",
  )
  parser.add_argument("--step", type=int, default=None, help="the checkpoint (default: newest)")
  parser.add_argument(
    "--label-map",
    default=None,
    help="segmentation only: the palette PNG of the label map (default: beside --out, "
    "STEM_labels.png)",
  )
  return parser.parse_args(argv)


def run(argv: list[str]) -> dict:
  """Parses `argv` (without the program name), predicts, returns the result."""
  args = parse_args(argv)
  return predict(
    args.workdir,
    args.image,
    out=args.out,
    score_threshold=args.score_threshold,
    step=args.step,
    label_map=args.label_map,
  )


def main(argv: list[str] | None = None) -> None:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  argv = sys.argv[1:] if argv is None else argv
  try:
    result = run(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(to_json(result))


if __name__ == "__main__":
  main()
