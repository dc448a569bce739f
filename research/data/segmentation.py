"""Semantic segmentation data: one record schema, its adapters, and the transforms.

The schema, what every source's adapter returns:
  "image"   uint8 [H, W, C]
  "labels"  integer [H, W]: each pixel's class id in [0, C), class 0 the background where
            the data set has one, or IGNORE (255: VOC's object boundaries and "difficult"
            regions), which counts in neither the loss nor the metrics

Adapters (`ADAPTERS`): digit_scenes/multi, its "semantic_mask" [H, W, 1] (0 background,
digit + 1 on the ink): 11 classes, "background", "0", ..., "9". PASCAL VOC's segmentation
masks are not in TFDS (its voc builders hold boxes only), so "voc/2007" and "voc/2012"
raise an error that says what is missing (`MISSING`) and points to "voc_segmentation":
VOCdevkit's SegmentationClass PNGs and SBD's .mat masks read from directories
(research.data.voc_segmentation), 21 classes, configured through `config.data`:

    --config.dataset=voc_segmentation --config.data.root=VOCdevkit/VOC2012 \\
    [--config.data.sbd_root=benchmark_RELEASE/dataset] \\
    [--config.data.train_split=train] [--config.data.test_split=val]

The run's "train" and "test" splits (sliced as TFDS slices: "test[:20]") are the split
expressions data.train_split (default "train") and data.test_split (default "val"): a VOC
split ("train", "val", "trainval"), an SBD one ("sbd:train", "sbd:val") or "A-B", the ids
of A not in B. The FCN paper's: root VOCdevkit/VOC2011, train_split "sbd:train" (8,498),
test_split "val-sbd:train" (736).

`segmentation_source(name, split)` gives a data set's records in the schema, each checked
as it is read (`check_record`); `from_config` is what `research.data.sources.from_config`
returns for `config.task == "segmentation"`: the spec with the segmentation classes and
the sources of each split.

Transforms, as the pipeline calls them (research.data.pipeline):
  `SegmentationTransform` (batch, both splits): image normalized, 1 channel repeated,
    labels int32.
  `RandomSegmentationCrop` (record, training): pad to at least crop x crop (mean colour,
    label IGNORE), a random crop x crop window, a left-right flip with `flip_probability`;
    image and labels always move together.
  `PadTo` (record, evaluation): pad at the bottom and right to a fixed size x size canvas
    (label IGNORE), so that every evaluation batch has one shape.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from research.data import datasets, transforms, voc_segmentation

IGNORE = 255  # research.evaluate.segmentation.IGNORE: counted nowhere


def from_digit_scenes(record: dict) -> dict:
  """A digit_scenes/multi record -> the schema: "labels" = semantic_mask [H, W] (0 background,
  digit + 1 on its ink)."""
  return {
    "image": np.asarray(record["image"]),
    "labels": np.asarray(record["semantic_mask"])[..., 0],
  }


# name -> (adapter, class names by label).
ADAPTERS = {
  "digit_scenes/multi": (from_digit_scenes, ("background", *map(str, range(10)))),
}
# Data sets a segmentation run may name whose masks this code cannot read yet, and why.
_VOC_MISSING = (
  "TFDS's {name} builder holds boxes only, no segmentation masks. Use dataset "
  "'voc_segmentation', which reads VOCdevkit's SegmentationClass PNGs and, for the FCN "
  "paper's training set, the SBD .mat masks of Hariharan et al. (21 classes: background + "
  "the 20 VOC classes): --config.dataset=voc_segmentation "
  "--config.data.root=VOCdevkit/VOC2011 [--config.data.sbd_root=benchmark_RELEASE/dataset "
  "--config.data.train_split=sbd:train --config.data.test_split=val-sbd:train] "
  "(research.data.voc_segmentation)."
)
MISSING = {name: _VOC_MISSING.format(name=name) for name in ("voc/2007", "voc/2012")}


def check_record(record: dict, name: str = "record", *, num_classes: int | None = None) -> dict:
  """Validates a schema record; returns it with numpy arrays.

  Raises ValueError naming the record (`name`) for: an image that is not uint8 [H, W, C];
  labels that are not integers of shape [H, W] (or [H, W, 1]) with the image's H and W;
  a class id < 0, or >= `num_classes` (when given), other than IGNORE.
  """
  image = np.asarray(record["image"])
  if image.ndim != 3 or image.dtype != np.uint8 or min(image.shape) < 1:
    raise ValueError(
      f"{name}: 'image' must be uint8 [H, W, C]; received {image.dtype} of shape {image.shape}."
    )
  if "labels" not in record:
    raise ValueError(f"{name}: 'labels' is missing; expected integers [H, W] = {image.shape[:2]}.")
  labels = np.asarray(record["labels"])
  if labels.ndim == 3 and labels.shape[-1] == 1:
    labels = labels[..., 0]
  if labels.shape != image.shape[:2]:
    raise ValueError(
      f"{name}: 'labels' must be [H, W] = {list(image.shape[:2])}, the image's size "
      f"(image {image.shape}); received shape {labels.shape}."
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}: 'labels' must be integers; received {labels.dtype}.")
  high = np.inf if num_classes is None else num_classes
  bad = ((labels < 0) | (labels >= high)) & (labels != IGNORE)
  if bad.any():
    y, x = np.unravel_index(int(np.argmax(bad)), bad.shape)
    expected = "a class id >= 0" if num_classes is None else f"a class id in [0, {num_classes})"
    raise ValueError(
      f"{name}: 'labels' has class id {int(labels[y, x])} at pixel (y, x) = ({y}, {x}) "
      f"({int(bad.sum())} such pixels); expected {expected} or {IGNORE} (ignored)."
    )
  return {**record, "image": image, "labels": labels}


class SegmentationSource:
  """Random-access records of `source` (len, __getitem__) through `adapter`, lazily, each
  checked by `check_record`, so that a bad one fails naming the data set, split and index:
  "digit_scenes/multi train record 12: 'labels' ...". `class_names`: by label."""

  def __init__(
    self, source, adapter, *, name: str | None = None, num_classes=None, class_names=None
  ):
    self.source, self.adapter, self.name = source, adapter, name
    self.num_classes, self.class_names = num_classes, class_names

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    name = f"{self.name} record {index}" if self.name else f"record {index}"
    return check_record(self.adapter(self.source[index]), name, num_classes=self.num_classes)


def _known(name: str) -> None:
  if name in MISSING:
    raise ValueError(f"dataset: {name!r} has no segmentation masks here: {MISSING[name]}")
  if name not in ADAPTERS and name != voc_segmentation.NAME:
    raise ValueError(
      f"dataset: {name!r} has no segmentation adapter; expected one of "
      f"{sorted([*ADAPTERS, voc_segmentation.NAME])}."
    )


def segmentation_spec(name: str) -> datasets.DatasetSpec:
  """The DatasetSpec of `name` with its segmentation classes (digit_scenes/multi: 11,
  voc_segmentation: 21; its splits "train" and "test" are config.data's, see `from_config`)."""
  _known(name)
  if name == voc_segmentation.NAME:
    names = voc_segmentation.CLASS_NAMES
    return datasets.DatasetSpec(name, (None, None, 3), len(names), class_names=names)
  names = ADAPTERS[name][1]
  return dataclasses.replace(datasets.get_spec(name), num_classes=len(names), class_names=names)


def segmentation_source(name: str, split: str, *, data_dir: str | None = None):
  """Records of data set `name` (a key of ADAPTERS) in the schema, checked as read."""
  spec = segmentation_spec(name)
  if name == voc_segmentation.NAME:
    raise ValueError(
      f"dataset: {name!r} reads its directories from config.data (root, sbd_root); call "
      "from_config(config) or voc_source(data, split)."
    )
  return SegmentationSource(
    datasets.data_source(name, split, data_dir=data_dir),
    ADAPTERS[name][0],
    name=f"{name} {split}",
    num_classes=spec.num_classes,
    class_names=spec.class_names,
  )


def voc_source(data, split: str) -> SegmentationSource:
  """The records of `split` ("train" or "test", optionally sliced: "test[:20]") of
  voc_segmentation: the split expression data.train_split (default "train") or
  data.test_split (default "val") of the VOC directory data.root, SBD at data.sbd_root."""
  from research.data.sources import split_of  # pylint: disable=import-outside-toplevel

  base = split.partition("[")[0]
  if base not in ("train", "test"):
    raise ValueError(
      f"split: {voc_segmentation.NAME} has splits 'train' (data.train_split) and 'test' "
      f"(data.test_split), optionally sliced like 'test[:20]'; received {split!r}."
    )
  expression = data.get(f"{base}_split") or {"train": "train", "test": "val"}[base]
  source = voc_segmentation.VocSegmentation(data.root, expression, sbd_root=data.get("sbd_root"))
  names = voc_segmentation.CLASS_NAMES
  return split_of(
    SegmentationSource(
      source,
      lambda record: record,
      name=f"{voc_segmentation.NAME} {base} ({expression})",
      num_classes=len(names),
      class_names=names,
    ),
    split,
  )


def _voc_from_config(config):
  data = config.get("data") or {}
  if not data.get("root"):
    raise ValueError(
      f"data.root: dataset {voc_segmentation.NAME!r} reads a VOC directory (JPEGImages/, "
      "SegmentationClass/, ImageSets/Segmentation/), e.g. "
      f"--config.data.root=VOCdevkit/VOC2012; received {data.get('root')!r}."
    )
  if not os.path.isdir(data.root):
    raise FileNotFoundError(
      f"data.root: {data.root!r} is no directory; expected VOC's (VOCdevkit/VOC2012) with "
      "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/."
    )
  built = {}

  def sources(split: str):
    if split not in built:
      built[split] = voc_source(data, split)
    return built[split]

  return segmentation_spec(voc_segmentation.NAME), sources


def from_config(config):
  """(spec, sources(split)) of `config.dataset` for the segmentation task; voc_segmentation's
  sources from config.data (`voc_source`)."""
  if config.dataset == voc_segmentation.NAME:
    return _voc_from_config(config)
  spec = segmentation_spec(config.dataset)
  data_dir = config.get("data_dir")
  return spec, lambda split: segmentation_source(config.dataset, split, data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class SegmentationTransform:
  """{"image": uint8 [B, H, W, C], "labels": [B, H, W]} -> {"image": float32 [B, H, W, C'],
  "labels": int32 [B, H, W]}: `channels` (a grey image repeated), 0..255 onto `value_range`,
  then (x - mean) / std per channel, as `transforms.ClassificationTransform`. Other keys
  are dropped."""

  value_range: tuple[float, float] = (0.0, 1.0)
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  channels: int | None = None

  def __call__(self, batch: dict) -> dict:
    image = transforms.repeat_channels(np.asarray(batch["image"]), self.channels)
    return {
      "image": transforms.normalize(image, self.value_range, self.mean, self.std),
      "labels": np.asarray(batch["labels"]).astype(np.int32),
    }

  def fill(self, channels: int) -> np.ndarray:
    """uint8 [channels]: the pixel value that normalizes to 0 (the mean colour), for padding."""
    if self.mean is None:
      return np.zeros(channels, np.uint8)
    low, high = self.value_range
    mean = np.broadcast_to(np.asarray(self.mean, np.float64), (channels,))
    return np.clip(np.round((mean - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def _pad(record: dict, height: int, width: int, fill: np.ndarray) -> dict:
  """The record padded at the bottom and right to at least height x width: the image with
  `fill`, the labels with IGNORE."""
  image, labels = record["image"], record["labels"]
  h, w = labels.shape
  if h >= height and w >= width:
    return record
  big_h, big_w = max(h, height), max(w, width)
  padded = np.empty((big_h, big_w, image.shape[-1]), np.uint8)
  padded[...] = fill[: image.shape[-1]] if fill.size >= image.shape[-1] else fill[0]
  padded[:h, :w] = image
  dtype = labels.dtype if np.iinfo(labels.dtype).max >= IGNORE else np.int32
  out = np.full((big_h, big_w), IGNORE, dtype)
  out[:h, :w] = labels
  return {**record, "image": padded, "labels": out}


@dataclasses.dataclass(frozen=True)
class RandomSegmentationCrop:
  """A training record -> a crop_size x crop_size window (crop_size 0: the whole record),
  then mirrored left-right with `flip_probability`; image and labels stay aligned.

  A record smaller than the crop is padded at the bottom and right first, the image with
  `fill` (uint8 [C], the mean colour) and the labels with IGNORE, which the loss skips.
  """

  crop_size: int = 0
  flip_probability: float = 0.0
  fill: tuple[int, ...] = (0,)

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    out = {"image": np.asarray(record["image"]), "labels": np.asarray(record["labels"])}
    if self.crop_size:
      s = self.crop_size
      out = _pad(out, s, s, np.asarray(self.fill, np.uint8))
      h, w = out["labels"].shape
      y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
      out = {
        "image": out["image"][y : y + s, x : x + s],
        "labels": out["labels"][y : y + s, x : x + s],
      }
    if self.flip_probability and rng.random() < self.flip_probability:
      out = {"image": out["image"][:, ::-1], "labels": out["labels"][:, ::-1]}
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class PadTo:
  """An evaluation record padded at the bottom and right to size x size (image `fill`,
  labels IGNORE: the padding is counted nowhere), so all batches share one shape and one
  compilation. A record larger than size is an error naming its shape."""

  size: int
  fill: tuple[int, ...] = (0,)

  def __call__(self, record: dict) -> dict:
    labels = np.asarray(record["labels"])
    if max(labels.shape) > self.size:
      raise ValueError(
        f"input.eval_size: a {labels.shape[0]}x{labels.shape[1]} image does not fit the "
        f"{self.size}x{self.size} evaluation canvas; raise eval_size to the largest side."
      )
    out = {"image": np.asarray(record["image"]), "labels": labels}
    return _pad(out, self.size, self.size, np.asarray(self.fill, np.uint8))
