"""Detection data: one record schema for every source, its adapters, and the fixed-shape transform.

The schema, what every source's adapter returns (G objects, G may be 0):
  "image"     uint8 [H, W, C]
  "boxes"     float32 [G, 4] (x1, y1, x2, y2) in pixels, pixel edges: a box
              covering columns 0..9 has x1 = 0, x2 = 10
  "labels"    int32 [G], 0-based class ids
  optional    "masks" uint8 [G, H, W] (1 on the object), "difficult" bool [G]
              (VOC), "crowd" bool [G] (COCO), "image_id" int64 (COCO)

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

import numpy as np

from research.data import crops, datasets, transforms
from research.ops.boxes import check_boxes

OPTIONAL_FLAGS = ("difficult", "crowd")


def check_record(record: dict, name: str = "record") -> dict:
  """Validates a record of the schema; returns it with numpy arrays of the schema's dtypes.

  Raises ValueError naming `name` and the key for: an image that is not uint8
  [H, W, C]; boxes not [G, 4], with NaN or infinite coordinates or x2 < x1 or
  y2 < y1; labels, masks or flags whose leading axis is not G.
  """
  image = np.asarray(record["image"])
  if image.ndim != 3 or image.dtype != np.uint8 or min(image.shape) < 1:
    raise ValueError(
      f"{name}: 'image' must be uint8 [H, W, C]; received {image.dtype} of shape {image.shape}."
    )
  boxes = np.asarray(record["boxes"])
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(
      f"{name}: 'boxes' must be [G, 4] (x1, y1, x2, y2); received shape {boxes.shape}."
    )
  boxes = check_boxes(boxes, f"{name}: 'boxes'").astype(np.float32)
  out = {**record, "image": image, "boxes": boxes}
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
  out["labels"] = out["labels"].astype(np.int32)
  for key in OPTIONAL_FLAGS:
    if key in out:
      out[key] = out[key].astype(bool)
  if "masks" in out:
    out["masks"] = out["masks"].astype(np.uint8)
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
  in order of id (0..79), so they are the contiguous class ids.
  """
  objects = record["objects"]
  return {
    "image": np.asarray(record["image"]),
    "boxes": _pixel_boxes(record),
    "labels": np.asarray(objects["label"], np.int32).reshape(-1),
    "crowd": np.asarray(objects["is_crowd"], bool).reshape(-1),
    "image_id": np.int64(record["image/id"]),
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
  """Random-access records of `source` (len, __getitem__) passed through `adapter`, lazily."""

  def __init__(self, source, adapter):
    self.source, self.adapter = source, adapter

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return self.adapter(self.source[index])


def detection_source(name: str, split: str, *, data_dir: str | None = None) -> DetectionSource:
  """Records of detection data set `name` (a key of ADAPTERS) in the schema.

  A real data set (voc/2007, voc/2012, coco/2017) must have been prepared as
  `research.data.datasets.data_source` says.
  """
  if name not in ADAPTERS:
    raise ValueError(
      f"dataset: {name!r} has no detection adapter; expected one of {sorted(ADAPTERS)}."
    )
  return DetectionSource(datasets.data_source(name, split, data_dir=data_dir), ADAPTERS[name])


def hflip(record: dict) -> dict:
  """A schema record mirrored left-right: image, masks and boxes (x1, x2 -> W - x2, W - x1)."""
  w = np.asarray(record["image"]).shape[1]
  boxes = np.asarray(record["boxes"], np.float32)
  out = {**record, "image": np.asarray(record["image"])[:, ::-1]}
  # Pixel edges make the mirror exact: columns x1..x2-1 go to W-x2..W-x1-1.
  out["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=-1)
  if "masks" in record:
    out["masks"] = np.asarray(record["masks"])[:, :, ::-1]
  return out


def _pad(values: np.ndarray, n: int, fill) -> np.ndarray:
  out = np.full((n, *values.shape[1:]), fill, values.dtype)
  out[: len(values)] = values[:n]
  return out


@dataclasses.dataclass(frozen=True)
class DetectionTransform:
  """A schema record -> fixed shapes; S = size, M = max_boxes:

    "image"          float32 [S, S, C]: resized so its longer side is S, aspect kept,
                     pixel values 0..255 onto `value_range`, then (x - mean) / std,
                     then padded with `pad_value` at the bottom and right
    "boxes"          float32 [M, 4] (x1, y1, x2, y2) in the resized image's pixels,
                     clipped to it; zero rows past the objects
    "labels"         int32 [M], -1 past the objects
    "valid"          bool [M], True for real objects
    "image_size"     int32 [2] (h, w): the resized image inside the canvas
    "original_size"  int32 [2] (H, W): boxes times H / h, W / w are original pixels
  and, when the record has them, "masks" uint8 [M, S, S] (nearest-neighbour
  resized), "difficult"/"crowd" bool [M] (False past the objects), "image_id".

  A record with more than `max_boxes` objects keeps its first `max_boxes`
  (choose max_boxes above the data set's largest count: TFDS's
  `objects` lengths, or `max(len(r["boxes"]))` over the records). A record with
  none is valid: `valid` is all False.
  channels: a 1-channel image repeated to this many (digits for 3-channel models).
  num_classes: when given, labels must lie in [0, num_classes).
  """

  size: int
  max_boxes: int
  num_classes: int | None = None
  value_range: tuple[float, float] = (0.0, 1.0)
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  channels: int | None = None
  # 0 is the mean colour after normalization, what torchvision's GeneralizedRCNNTransform pads with.
  pad_value: float = 0.0

  def __call__(self, record: dict) -> dict:
    return self._transform(check_record(record))

  def _transform(self, record: dict) -> dict:
    if self.size < 1 or self.max_boxes < 1:
      raise ValueError(
        f"detection transform: size and max_boxes must be positive; received size={self.size}, "
        f"max_boxes={self.max_boxes}."
      )
    labels = record["labels"]
    if self.num_classes is not None and ((labels < 0) | (labels >= self.num_classes)).any():
      bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
      raise ValueError(
        f"labels: expected class ids in [0, {self.num_classes}) for num_classes="
        f"{self.num_classes}; received {bad}."
      )
    image = transforms.repeat_channels(record["image"], self.channels)
    (height, width), s = image.shape[:2], self.size
    scale = s / max(height, width)
    h, w = max(1, min(s, round(height * scale))), max(1, min(s, round(width * scale)))
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
      kept = record["masks"][:m]
      masks[: len(kept), :h, :w] = kept[:, rows[:, None], cols[None, :]]
      out["masks"] = masks
    if "image_id" in record:
      out["image_id"] = np.int64(record["image_id"])
    return out


@dataclasses.dataclass(frozen=True)
class RandomDetectionTransform(DetectionTransform):
  """`DetectionTransform` after a left-right flip of the record with `flip_probability`.

  Called as `transform(record, rng)` with a numpy Generator, the way the
  pipeline's `record_transform` seeds one per record.
  """

  flip_probability: float = 0.5

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    record = check_record(record)
    if rng.random() < self.flip_probability:
      record = hflip(record)
    return self._transform(record)
