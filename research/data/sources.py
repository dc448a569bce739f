"""The data set a config names: its spec and a random-access source for each split.

`config.dataset` is a key of research.data.datasets.DATASETS (a TFDS name), or
"coco_format" for a user's own COCO-format data set, read from the config alone:

    --config.dataset=coco_format \\
    --config.data.annotation_file=ann/train.json --config.data.image_dir=images/train \\
    [--config.data.test_annotation_file=ann/val.json --config.data.test_image_dir=images/val]

Its classes are the file's categories (labels 0..K-1 in order of category id, their
names in `spec.class_names`). Without a test file the test split is the training file,
said in the log. Splits are "train" and "test", optionally sliced as TFDS slices them:
"test[:20]", "train[10%:]".
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re

from ml_collections import ConfigDict

from research.data import datasets, detection, proposals, segmentation

COCO_FORMAT = "coco_format"
# Tasks whose records are in the detection schema (research.data.detection).
DETECTION_SCHEMA_TASKS = ("detection", "rcnn")
_SPLIT = re.compile(r"^(train|test)(?:\[(-?\d*%?):(-?\d*%?)\])?$")


class Subset:
  """Records `start:stop` of a random-access `source` (len, __getitem__)."""

  def __init__(self, source, start: int, stop: int):
    self.source, self.indices = source, range(len(source))[start:stop]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[self.indices[index]]

  def __getattr__(self, name):  # class_names, image_ids, ... of the whole file
    return getattr(self.source, name)


def _bound(text: str, n: int) -> int | None:
  if not text:
    return None
  if text.endswith("%"):
    return round(int(text[:-1]) * n / 100)
  return int(text)


def split_of(source, split: str):
  """`source` sliced as `split` ("train", "test[:20]", "train[10%:]") says; the name is not read."""
  match = _SPLIT.match(split)
  if match is None:
    raise ValueError(
      f"split: expected 'train' or 'test', optionally sliced like 'test[:20]' or 'train[:90%]'; "
      f"received {split!r}."
    )
  if match.group(2) is None and match.group(3) is None:
    return source
  n = len(source)
  return Subset(source, _bound(match.group(2), n), _bound(match.group(3), n))


def _coco_format_sources(data: ConfigDict):
  from research.data.coco_format import CocoFormat  # pylint: disable=import-outside-toplevel

  missing = [k for k in ("annotation_file", "image_dir") if not data.get(k)]
  if missing:
    raise ValueError(
      f"data.{missing[0]}: dataset 'coco_format' reads its records from "
      "config.data.annotation_file and config.data.image_dir; received "
      f"{ {k: data.get(k) for k in ('annotation_file', 'image_dir')} }."
    )
  masks = bool(data.get("masks", False))
  train = CocoFormat(data.annotation_file, data.image_dir, masks=masks)
  if data.get("test_annotation_file"):
    test = CocoFormat(
      data.test_annotation_file, data.get("test_image_dir") or data.image_dir, masks=masks
    )
    if test.class_names != train.class_names:
      raise ValueError(
        f"data.test_annotation_file: its categories {list(test.class_names)[:10]} differ from "
        f"the training file's {list(train.class_names)[:10]}."
      )
  else:
    logging.info("coco_format: no data.test_annotation_file; the test split is the training file.")
    test = train
  spec = datasets.DatasetSpec(
    COCO_FORMAT, (None, None, train.channels or 3), train.num_classes, class_names=train.class_names
  )
  files = {"train": train, "test": test}
  return spec, lambda split: split_of(files.get(split.partition("[")[0], train), split)


@functools.lru_cache(maxsize=8)
def _cached_coco_format(items: tuple):
  return _coco_format_sources(ConfigDict(dict(items)))


PROPOSAL_METHODS = ("selective_search",)


def _with_proposals(config: ConfigDict, sources, root: str):
  """`sources` whose records carry "proposals" (research.data.proposals), computed once per
  split into root/proposals/SPLIT-MODE-MAX (or config.proposals.cache_dir/...)."""
  p = config.proposals
  if p.get("method", "selective_search") not in PROPOSAL_METHODS:
    raise ValueError(
      f"proposals.method: expected one of {PROPOSAL_METHODS}; received {p.method!r}."
    )
  mode, top = p.get("mode", "fast"), p.get("max_proposals", 2000)

  def split_source(split: str):
    source = sources(split)
    name = re.sub(r"[^A-Za-z0-9_.%-]+", "_", split).strip("_")
    directory = os.path.join(p.get("cache_dir") or root, "proposals", f"{name}-{mode}-{top}")
    cache = proposals.ProposalCache(
      source, directory, mode=mode, max_proposals=top, workers=p.get("workers", 1)
    )
    return proposals.WithProposals(source, cache.ensure())

  return split_source


def from_config(config: ConfigDict):
  """-> (spec, sources): the DatasetSpec of `config.dataset` and `sources(split)`, a
  random-access source of that split's records.

  With `config.task == "detection"` a TFDS data set's records come in the detection
  schema (research.data.detection.detection_source), each checked as it is read: a bad
  one is an error naming the data set, the split, its index and image_id. With
  `config.proposals` (R-CNN, Fast R-CNN) each record also has its region proposals,
  cached beside the data set (the prepared TFDS directory, or the annotation file's).
  With `config.task == "segmentation"` the records are research.data.segmentation's
  schema ({"image", "labels" [H, W]}) and the spec counts the segmentation classes
  (digit_scenes/multi: background + 10 digits).
  """
  if config.get("task") == "segmentation":
    return segmentation.from_config(config)
  if config.dataset == COCO_FORMAT:
    data = config.get("data") or ConfigDict()
    # The JSON is parsed once per process however often the config is resolved.
    spec, sources = _cached_coco_format(tuple(sorted(data.to_dict().items())))
    if config.get("proposals"):
      root = os.path.dirname(os.path.abspath(data.annotation_file))
      sources = _with_proposals(config, sources, root)
    if config.get("regions"):
      return _regions(config, spec, sources)
    return spec, sources
  spec = datasets.get_spec(config.dataset)
  data_dir = config.get("data_dir")
  if config.get("task") in DETECTION_SCHEMA_TASKS and config.dataset in detection.ADAPTERS:
    sources = lambda split: detection.detection_source(config.dataset, split, data_dir=data_dir)  # noqa: E731
  else:
    sources = lambda split: datasets.data_source(config.dataset, split, data_dir=data_dir)  # noqa: E731
  if config.get("proposals"):
    root = datasets.prepared_directory(config.dataset, data_dir=data_dir)
    sources = _with_proposals(config, sources, root)
  if config.get("regions"):
    return _regions(config, spec, sources)
  return spec, sources


def _regions(config: ConfigDict, spec, sources):
  """R-CNN's classification data set of warped windows (research.detection.rcnn.RegionRecords)
  of each split's detection records: classes 0 (background) and 1..K, images of
  config.regions.size; one set of windows per split, built once per process."""
  from research.detection import rcnn  # pylint: disable=import-outside-toplevel

  if not config.get("proposals"):
    raise ValueError("regions: R-CNN's windows come from proposals; set config.proposals too.")
  r = config.regions
  size = r.get("size", 227)
  channels = spec.image_shape[-1]
  names = ("background", *(spec.class_names or map(str, range(spec.num_classes))))
  windows = dataclasses.replace(
    spec, image_shape=(size, size, channels), num_classes=spec.num_classes + 1, class_names=names
  )
  built = {}

  def split_source(split: str):
    if split not in built:
      built[split] = rcnn.RegionRecords(
        sources(split),
        size,
        fill=tuple(r.get("fill", (0,))),
        seed=config.get("seed", 0),
        fg_iou=r.get("fg_iou", 0.5),
        fg_fraction=r.get("fg_fraction", 0.25),
      )
    return built[split]

  return windows, split_source


def class_names(spec: datasets.DatasetSpec) -> tuple[str, ...]:
  """The spec's class names, else the labels as text."""
  return tuple(spec.class_names or map(str, range(spec.num_classes)))


__all__ = ["COCO_FORMAT", "Subset", "class_names", "from_config", "split_of"]
