"""Detection data: one record schema for every source, its adapters, and the fixed-shape transform.

The schema, what every source's adapter returns (G objects, G may be 0):
  "image"     uint8 [H, W, C]
  "boxes"     float32 [G, 4] (x1, y1, x2, y2) in pixels, pixel edges: a box
              covering columns 0..9 has x1 = 0, x2 = 10
  "labels"    int32 [G], 0-based class ids
  optional    "masks" uint8 [G, H, W] (1 on the object), "difficult" bool [G]
              (VOC), "crowd" bool [G] (COCO), "image_id" int64 (COCO),
              "proposals" float32 [P, 4] region proposals, best first (R-CNN and
              Fast R-CNN: research.data.proposals)

Adapters: `from_voc` (TFDS voc/2007, voc/2012), `from_coco` (TFDS coco/2017),
`from_digit_scenes` (digit_scenes/multi); research.data.coco_format reads a
user's own COCO-format data set into the same schema. `detection_source(name,
split)` gives a data set's records in the schema.

`DetectionTransform` (evaluation) and `RandomDetectionTransform` (training, a
random horizontal flip) turn a record into fixed shapes, so any records batch:
the image resized to fit a size x size canvas keeping its aspect ratio (padded
at the bottom and right), pixels normalized to float32, and the objects padded
to `max_boxes` with a validity mask. They are the pipeline's per-record
transform; the batch transform has nothing left to do:

    source = detection.detection_source("voc/2007", "train+validation")
    batches = pipeline.train_iterator(
      source, global_batch_size=64, seed=0, transform=lambda batch: batch,
      record_transform=detection.RandomDetectionTransform(size=448, max_boxes=64))
    evaluation = pipeline.eval_batches(
      test_source, global_batch_size=64, transform=lambda batch: batch,
      record_transform=detection.DetectionTransform(size=448, max_boxes=64))
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from research.data import augment, crops, datasets, transforms

log = logging.getLogger(__name__)

OPTIONAL_FLAGS = ("difficult", "crowd")
# Set by the first record with more objects than max_boxes: the warning comes once per process.
_max_boxes_warned = False


def _describe(record: dict, name: str) -> str:
  """`name`, with the record's COCO image_id when it has one: what an error calls the image."""
  if "image_id" in record:
    return f"{name} (image_id {record['image_id']})"
  return name


def _coordinates(box: np.ndarray) -> str:
  return "(x1, y1, x2, y2) = (" + ", ".join(f"{float(v):g}" for v in box) + ")"


def _check_box_values(boxes, labels, h: int, w: int, name: str, num_classes: int | None):
  """Raises ValueError naming the first bad box of boxes [G, 4] (float64) and labels [G]."""
  with np.errstate(invalid="ignore"):  # inf - inf and NaN comparisons: the finite check comes first
    finite = np.isfinite(boxes).all(axis=1)
    x1, y1, x2, y2 = boxes.T
    checks = (
      (~finite, "has a NaN or infinite coordinate", "finite pixel coordinates"),
      (
        finite & ((x2 <= x1) | (y2 <= y1)),
        "has a zero or negative width x2 - x1 or height y2 - y1",
        "x1 < x2 and y1 < y2 (pixel edges: a box on columns 0..9 has x1 = 0, x2 = 10)",
      ),
      (
        finite & ((x1 >= w) | (y1 >= h) | (x2 <= 0) | (y2 <= 0)),
        f"lies entirely outside the {h}x{w} (height x width) image",
        f"part of it inside 0 <= x <= {w}, 0 <= y <= {h} (the part outside is clipped)",
      ),
      (
        labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes),
        "has label {label}",
        "a class id >= 0" if num_classes is None else f"a class id in [0, {num_classes})",
      ),
    )
  for bad, problem, expected in checks:
    if bad.any():
      i, count = int(np.argmax(bad)), int(bad.sum())
      more = f" ({count} of the {len(boxes)} boxes fail this check)" if count > 1 else ""
      raise ValueError(
        f"{name}: box {i} {_coordinates(boxes[i])} {problem.format(label=labels[i])}; expected "
        f"{expected}{more}."
      )


def check_record(
  record: dict,
  name: str = "record",
  *,
  num_classes: int | None = None,
  channels: tuple[int, ...] | None = None,
) -> dict:
  """Validates a record of the schema; returns it with numpy arrays of the schema's dtypes.

  Raises ValueError naming the image (`name`, and the record's image_id when it
  has one), the key and what was expected for: an image that is not uint8
  [H, W, C] (or, given `channels`, whose C is not one of them); boxes not
  [G, 4]; labels, masks or flags whose leading axis is not G; and, naming the
  box by index and coordinates, a box with a NaN or infinite coordinate, a
  zero or negative width or height, or lying entirely outside the image (a box
  partly outside is valid: the transforms clip it), a label < 0 (or >=
  `num_classes`, when given), or an empty mask (no pixel set) for its box.
  """
  name = _describe(record, name)
  image = np.asarray(record["image"])
  if image.ndim != 3 or image.dtype != np.uint8 or min(image.shape) < 1:
    raise ValueError(
      f"{name}: 'image' must be uint8 [H, W, C]; received {image.dtype} of shape {image.shape}."
    )
  if channels is not None and image.shape[-1] not in channels:
    allowed = " or ".join(f"[H, W, {c}]" for c in sorted(set(channels)))
    raise ValueError(f"{name}: 'image' must be {allowed}; received shape {image.shape}.")
  boxes = np.asarray(record["boxes"])
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(
      f"{name}: 'boxes' must be [G, 4] (x1, y1, x2, y2); received shape {boxes.shape}."
    )
  out = {**record, "image": image, "boxes": boxes.astype(np.float32)}
  g, (h, w) = len(boxes), image.shape[:2]
  expected = {"labels": (g,), "masks": (g, h, w), **{k: (g,) for k in OPTIONAL_FLAGS}}
  for key, shape in expected.items():
    if key not in record:
      if key == "labels":
        raise ValueError(f"{name}: 'labels' is missing; expected int [G] = [{g}].")
      continue
    value = np.asarray(record[key])
    if value.shape != shape:
      raise ValueError(
        f"{name}: {key!r} must have shape {list(shape)} for {g} boxes on a {h}x{w} image; "
        f"received {value.shape}."
      )
    out[key] = value
  if not np.issubdtype(out["labels"].dtype, np.integer):
    raise ValueError(f"{name}: 'labels' must be integers; received {out['labels'].dtype}.")
  # float64: a float16 or float32 box is checked at the precision it was given in.
  _check_box_values(boxes.astype(np.float64), out["labels"], h, w, name, num_classes)
  out["labels"] = out["labels"].astype(np.int32)
  for key in OPTIONAL_FLAGS:
    if key in out:
      out[key] = out[key].astype(bool)
  if "masks" in out:
    out["masks"] = out["masks"].astype(np.uint8)
    # A box's mask must cover some pixel: an empty target would teach "no object here".
    empty = np.flatnonzero(out["masks"].reshape(g, h * w).max(axis=1, initial=0) == 0)
    if empty.size:
      i = int(empty[0])
      raise ValueError(
        f"{name}: 'masks'[{i}] is empty (no pixel set) for box {i} "
        f"{[round(float(v), 2) for v in boxes[i]]}; every box needs its object's pixels "
        f"({empty.size} empty masks in all)."
      )
  if "proposals" in record:
    proposals = np.asarray(record["proposals"], np.float32)
    if proposals.ndim != 2 or proposals.shape[-1] != 4 or not np.isfinite(proposals).all():
      raise ValueError(
        f"{name}: 'proposals' must be finite float [P, 4] (x1, y1, x2, y2); received "
        f"{proposals.dtype} of shape {proposals.shape}"
        + ("" if proposals.ndim != 2 or proposals.shape[-1] != 4 else " with NaN or inf")
        + "."
      )
    out["proposals"] = proposals
  return out


def _pixel_boxes(record: dict) -> np.ndarray:
  """A TFDS record's objects' BBoxFeature values, normalized (ymin, xmin, ymax, xmax), -> [G, 4]
  (x1, y1, x2, y2) pixels. Data sources give a list of [4] arrays ([] for none), tf.data [G, 4].
  """
  h, w = np.shape(record["image"])[:2]
  bbox = np.asarray(record["objects"]["bbox"], np.float32)
  if bbox.size == 0:
    bbox = bbox.reshape(0, 4)
  elif bbox.ndim != 2 or bbox.shape[1] != 4:
    raise ValueError(
      f"objects.bbox: expected [G, 4] (ymin, xmin, ymax, xmax); received shape {bbox.shape}."
    )
  return bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)


def from_voc(record: dict) -> dict:
  """A TFDS voc/2007 or voc/2012 record -> the schema, with "difficult".

  TFDS stores VOC's 1-based pixel indices over the image size: (xmin / W, ...).
  xmin is the first covered pixel's 1-based index, so its left edge is xmin - 1
  (detectron2 subtracts the 1 too); xmax, the last pixel's 1-based index, is
  already its right edge.
  """
  objects = record["objects"]
  boxes = _pixel_boxes(record)
  boxes[:, :2] = np.maximum(boxes[:, :2] - 1, 0)
  return {
    "image": np.asarray(record["image"]),
    "boxes": boxes,
    "labels": np.asarray(objects["label"], np.int32).reshape(-1),
    "difficult": np.asarray(objects["is_difficult"], bool).reshape(-1),
  }


def from_coco(record: dict) -> dict:
  """A TFDS coco/2017 record -> the schema, with "crowd" and "image_id".

  COCO boxes are already in pixel edges; TFDS labels are the 80 used categories
  in order of id (0..79), so they are the contiguous class ids. Boxes of zero
  width or height, which COCO's own annotations hold a few of, are dropped with
  their labels and flags (logged at debug level only), as torchvision's COCO
  training recipe drops them; a degenerate box from any other source is an error.
  """
  objects = record["objects"]
  boxes = _pixel_boxes(record)
  labels = np.asarray(objects["label"], np.int32).reshape(-1)
  crowd = np.asarray(objects["is_crowd"], bool).reshape(-1)
  image_id = np.int64(record["image/id"])
  # Written as "not degenerate" so a NaN box is kept, and check_record reports it.
  keep = ~((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
  if not keep.all() and len(labels) == len(crowd) == len(boxes):
    log.debug(
      "coco/2017 image_id %d: dropped %d of %d boxes of zero width or height.",
      image_id,
      int((~keep).sum()),
      len(boxes),
    )
    boxes, labels, crowd = boxes[keep], labels[keep], crowd[keep]
  return {
    "image": np.asarray(record["image"]),
    "boxes": boxes,
    "labels": labels,
    "crowd": crowd,
    "image_id": image_id,
  }


def from_digit_scenes(record: dict) -> dict:
  """A digit_scenes/multi record (padded to 5 digits) -> the schema, with instance "masks"."""
  n = int(record["num_objects"])
  return {
    "image": np.asarray(record["image"]),
    "boxes": np.asarray(record["boxes"], np.float32)[:n],
    "labels": np.asarray(record["labels"], np.int32)[:n],
    "masks": np.asarray(record["instance_masks"], np.uint8)[:n],
  }


ADAPTERS = {
  "voc/2007": from_voc,
  "voc/2012": from_voc,
  "coco/2017": from_coco,
  "digit_scenes/multi": from_digit_scenes,
}


class DetectionSource:
  """Random-access records of `source` (len, __getitem__) passed through `adapter`, lazily,
  each checked by `check_record`, so a bad one fails naming the data set `name`, its index
  and image_id: "coco/2017 record 12 (image_id 139): box 3 ...".

  num_classes: when given, labels must lie in [0, num_classes).
  channels: when given, the images' channel count.
  """

  def __init__(
    self,
    source,
    adapter,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    channels: int | None = None,
  ):
    self.source, self.adapter = source, adapter
    self.name, self.num_classes, self.channels = name, num_classes, channels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return check_record(
      self.adapter(self.source[index]),
      f"{self.name} record {index}" if self.name else f"record {index}",
      num_classes=self.num_classes,
      channels=None if self.channels is None else (self.channels,),
    )


def detection_source(name: str, split: str, *, data_dir: str | None = None) -> DetectionSource:
  """Records of detection data set `name` (a key of ADAPTERS) in the schema.

  A real data set (voc/2007, voc/2012, coco/2017) must have been prepared as
  `research.data.datasets.data_source` says. Each record is checked against the
  data set's class count and channels, an error naming it "{name} {split} record {index}".
  """
  if name not in ADAPTERS:
    raise ValueError(
      f"dataset: {name!r} has no detection adapter; expected one of {sorted(ADAPTERS)}."
    )
  spec = datasets.get_spec(name)
  return DetectionSource(
    datasets.data_source(name, split, data_dir=data_dir),
    ADAPTERS[name],
    name=f"{name} {split}",
    num_classes=spec.num_classes,
    channels=spec.image_shape[-1],
  )


def hflip(record: dict) -> dict:
  """A schema record mirrored left-right: image, masks and boxes (x1, x2 -> W - x2, W - x1)."""
  w = np.asarray(record["image"]).shape[1]
  boxes = np.asarray(record["boxes"], np.float32)
  out = {**record, "image": np.asarray(record["image"])[:, ::-1]}
  # Pixel edges make the mirror exact: columns x1..x2-1 go to W-x2..W-x1-1.
  out["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=-1)
  if "masks" in record:
    out["masks"] = np.asarray(record["masks"])[:, :, ::-1]
  if "proposals" in record:
    p = np.asarray(record["proposals"], np.float32)
    out["proposals"] = np.stack([w - p[:, 2], p[:, 1], w - p[:, 0], p[:, 3]], axis=-1)
  return out


def keep_largest(record: dict, max_boxes: int, name: str = "record") -> dict:
  """A checked record with at most `max_boxes` objects: the largest by area inside the image.

  A record with more objects loses its smallest (ties: the later ones); boxes,
  labels, masks and flags keep their order and stay aligned. The first such
  record of the process logs a warning with its count.
  """
  boxes = record["boxes"]
  if len(boxes) <= max_boxes:
    return record
  global _max_boxes_warned
  if not _max_boxes_warned:
    _max_boxes_warned = True
    log.warning(
      "%s has %d objects, more than max_boxes=%d: keeping the %d largest. Raise max_boxes above "
      "the data set's largest count to keep all (warned once per process).",
      _describe(record, name),
      len(boxes),
      max_boxes,
      max_boxes,
    )
  h, w = record["image"].shape[:2]
  # The area the transform keeps: a box mostly outside the image counts by its inside part.
  inside = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
  area = (inside[:, 2] - inside[:, 0]) * (inside[:, 3] - inside[:, 1])
  keep = np.sort(np.argsort(-area, kind="stable")[:max_boxes])
  out = dict(record)
  for key in ("boxes", "labels", "masks", *OPTIONAL_FLAGS):
    if key in record:
      out[key] = record[key][keep]
  return out


def _pad(values: np.ndarray, n: int, fill) -> np.ndarray:
  out = np.full((n, *values.shape[1:]), fill, values.dtype)
  out[: len(values)] = values[:n]
  return out


@dataclasses.dataclass(frozen=True)
class DetectionTransform:
  """A schema record -> fixed shapes; S = size, M = max_boxes:

    "image"          float32 [S, S, C]: resized with its aspect kept so that its longer
                     side is `max_size` (default S) or, with `min_size`, its shorter
                     side is min_size unless that makes the longer exceed max_size
                     (torchvision's GeneralizedRCNNTransform: 800 / 1,333 for COCO,
                     the Faster R-CNN paper's 600 / 1,000 for VOC),
                     pixel values 0..255 onto `value_range`, then (x - mean) / std,
                     then padded with `pad_value` at the bottom and right
    "boxes"          float32 [M, 4] (x1, y1, x2, y2) in the resized image's pixels,
                     clipped to it; zero rows past the objects
    "labels"         int32 [M], -1 past the objects
    "valid"          bool [M], True for real objects
    "image_size"     int32 [2] (h, w): the resized image inside the canvas
    "original_size"  int32 [2] (H, W): boxes times H / h, W / w are original pixels
  and, when the record has them, "masks" uint8 [M, S, S] (nearest-neighbour
  resized), "difficult"/"crowd" bool [M] (False past the objects), "image_id",
  and, from "proposals", "proposals" float32 [P, 4] (P = max_proposals: the
  first, best-ranked ones, scaled as the boxes and clipped to the image; those
  left without area by the clipping dropped; zero rows after them) with
  "proposal_valid" bool [P].

  Records are checked by `check_record` (a bad one raises ValueError naming its
  image_id, when it has one, and the box). A record with more than `max_boxes`
  objects keeps its `max_boxes` largest by area (`keep_largest`) and warns once
  per process (choose max_boxes above the data set's largest count: TFDS's
  `objects` lengths, or `max(len(r["boxes"]))` over the records). A record with
  none is valid: `valid` is all False.
  channels: a 1-channel image repeated to this many (digits for 3-channel models);
    an image must have 1 or this many channels (without it, 1 or len(mean)
    when mean is given).
  num_classes: when given, labels must lie in [0, num_classes).
  The canvas S is best a multiple of the backbone's largest stride (32 for ResNets, 64
  with FPN's extra level): torchvision pads batches to multiples of 32.
  """

  size: int
  max_boxes: int
  min_size: int | None = None
  max_size: int | None = None
  num_classes: int | None = None
  value_range: tuple[float, float] = (0.0, 1.0)
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  channels: int | None = None
  # 0 is the mean colour after normalization, what torchvision's GeneralizedRCNNTransform pads with.
  pad_value: float = 0.0
  max_proposals: int = 2000

  def __call__(self, record: dict) -> dict:
    return self._transform(self._check(record))

  def _check(self, record: dict) -> dict:
    if self.size < 1 or self.max_boxes < 1 or self.max_proposals < 1:
      raise ValueError(
        "detection transform: size, max_boxes and max_proposals must be positive; received "
        f"size={self.size}, max_boxes={self.max_boxes}, max_proposals={self.max_proposals}."
      )
    if not 1 <= (self.max_size or self.size) <= self.size or (self.min_size or 1) < 1:
      raise ValueError(
        "detection transform: expected 1 <= min_size and 1 <= max_size <= size (the canvas); "
        f"received min_size={self.min_size}, max_size={self.max_size}, size={self.size}."
      )
    channels = self.channels or (len(self.mean) if self.mean is not None else None)
    return check_record(
      record, num_classes=self.num_classes, channels=None if channels is None else (1, channels)
    )

  def _transform(self, record: dict) -> dict:
    record = keep_largest(record, self.max_boxes)
    labels = record["labels"]
    image = transforms.repeat_channels(record["image"], self.channels)
    (height, width), s = image.shape[:2], self.size
    longest = self.max_size or s
    scale = longest / max(height, width)
    if self.min_size:
      scale = min(self.min_size / min(height, width), scale)
    # Rounded down, as torchvision's interpolate(scale_factor=, recompute_scale_factor=True);
    # the 1e-6 keeps a side that scales to exactly max_size (or min_size) from 1 px less.
    h, w = (max(1, min(s, math.floor(side * scale + 1e-6))) for side in (height, width))
    pixels = transforms.normalize(crops.resize(image, h, w), self.value_range, self.mean, self.std)
    canvas = np.full((s, s, pixels.shape[-1]), self.pad_value, np.float32)
    canvas[:h, :w] = pixels

    m = self.max_boxes
    # Each axis scales by its own rounded factor, so boxes follow the pixels exactly.
    factors = np.array([w / width, h / height] * 2, np.float32)
    boxes = np.minimum(np.maximum(record["boxes"] * factors, 0), np.array([w, h, w, h], np.float32))
    out = {
      "image": canvas,
      "boxes": _pad(boxes.astype(np.float32), m, 0),
      "labels": _pad(labels, m, -1),
      "valid": np.arange(m) < len(labels),
      "image_size": np.array([h, w], np.int32),
      "original_size": np.array([height, width], np.int32),
    }
    for key in OPTIONAL_FLAGS:
      if key in record:
        out[key] = _pad(record[key], m, False)
    if "masks" in record:
      # Nearest neighbour at pixel centres keeps masks binary and costs one gather.
      rows = np.minimum(((np.arange(h) + 0.5) * (height / h)).astype(np.int64), height - 1)
      cols = np.minimum(((np.arange(w) + 0.5) * (width / w)).astype(np.int64), width - 1)
      masks = np.zeros((m, s, s), np.uint8)
      kept = record["masks"]
      masks[: len(kept), :h, :w] = kept[:, rows[:, None], cols[None, :]]
      out["masks"] = masks
    if "image_id" in record:
      out["image_id"] = np.int64(record["image_id"])
    if "proposals" in record:
      p = record["proposals"][: self.max_proposals] * factors
      p = np.minimum(np.maximum(p, 0), np.array([w, h, w, h], np.float32))
      p = p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])]  # outside the image: no area left
      out["proposals"] = _pad(p.astype(np.float32), self.max_proposals, 0)
      out["proposal_valid"] = np.arange(self.max_proposals) < len(p)
    return out


@dataclasses.dataclass(frozen=True)
class RandomDetectionTransform(DetectionTransform):
  """`DetectionTransform` after a left-right flip of the record with `flip_probability`
  and, where set, YOLO's augmentation (research.data.augment): scaling by up to
  `scale_jitter` and translation by up to `translate` of the image's size, exposure and
  saturation by up to the factors `exposure` and `saturation` (1: none).

  Called as `transform(record, rng)` with a numpy Generator, the way the
  pipeline's `record_transform` seeds one per record.
  """

  flip_probability: float = 0.5
  scale_jitter: float = 0.0
  translate: float = 0.0
  exposure: float = 1.0
  saturation: float = 1.0

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    record = self._check(record)
    if rng.random() < self.flip_probability:
      record = hflip(record)
    if self.scale_jitter or self.translate:
      record = augment.scale_translate(
        record, rng, scale=self.scale_jitter, translate=self.translate
      )
    if self.exposure != 1 or self.saturation != 1:
      image = augment.hsv_jitter(
        record["image"], rng, exposure=self.exposure, saturation=self.saturation
      )
      record = {**record, "image": image}
    return self._transform(record)
