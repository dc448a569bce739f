"""Data sets by name: the offline builders of this package and real TFDS data sets.

`data_source(name, split)` returns a random-access source (len, __getitem__)
of dicts {"image": uint8 [H, W, C], "label": int}; digit_scenes/single adds
"box" and "mask", and digit_scenes/multi has "labels", "boxes" and masks in
place of "label" (research.data.digit_scenes lists them), as do the detection
data sets voc/2007, voc/2012 and coco/2017 ("objects"; research.data.detection
turns them all into one schema). Offline data sets are
prepared on first use; real ones must have been prepared by the user in the
array_record format, and an unprepared one raises an error that says how.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import os
from typing import Any

import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about a data set.

  image_shape: (H, W, C) of the stored images, H and W None when they vary.
  builder: "module.Class" of an offline builder of this package, else None.
  config: the builder config of that builder, e.g. "single", else None.
  class_names: the classes' names by label, where the data set names them.
  """

  name: str
  image_shape: tuple[Any, Any, int]
  num_classes: int
  train_split: str = "train"
  test_split: str = "test"
  builder: str | None = None
  config: str | None = None
  class_names: tuple[str, ...] | None = None


# TFDS voc's label names, by label.
VOC_CLASSES = (
  "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
  "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
  "tvmonitor",
)  # fmt: skip

DATASETS = {
  spec.name: spec
  for spec in (
    DatasetSpec("mnist5k", (28, 28, 1), 10, builder="research.data.mnist5k.Mnist5k"),
    DatasetSpec("digits", (8, 8, 1), 10, builder="research.data.digits.Digits"),
    DatasetSpec(
      "digit_scenes/single",
      (64, 64, 1),
      10,
      builder="research.data.digit_scenes.DigitScenes",
      config="single",
    ),
    DatasetSpec(
      "digit_scenes/multi",
      (128, 128, 1),
      10,
      builder="research.data.digit_scenes.DigitScenes",
      config="multi",
    ),
    DatasetSpec("mnist", (28, 28, 1), 10),
    DatasetSpec("cifar10", (32, 32, 3), 10),
    DatasetSpec("imagenet2012", (None, None, 3), 1000, test_split="validation"),
    # Detection (research.data.detection adapts their records). VOC 2007's papers train on
    # trainval and test on test; VOC 2012's test split has no annotations in TFDS.
    DatasetSpec(
      "voc/2007", (None, None, 3), 20, train_split="train+validation", class_names=VOC_CLASSES
    ),
    DatasetSpec("voc/2012", (None, None, 3), 20, test_split="validation", class_names=VOC_CLASSES),
    DatasetSpec("coco/2017", (None, None, 3), 80, test_split="validation"),
  )
}


def get_spec(name: str) -> DatasetSpec:
  """The spec of data set `name`; ValueError listing the known names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"dataset: unknown data set {name!r}; expected one of {sorted(DATASETS)}.")
  return DATASETS[name]


@contextlib.contextmanager
def _prepare_lock(data_dir: str, name: str):
  # Two processes of one multi-host run may both find the data set unprepared.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name.replace('/', '_')}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _offline_builder(spec: DatasetSpec, data_dir: str) -> tfds.core.DatasetBuilder:
  module, cls = spec.builder.rsplit(".", 1)
  builder_cls = getattr(importlib.import_module(module), cls)
  make = lambda: builder_cls(data_dir=data_dir, config=spec.config, file_format="array_record")
  builder = make()
  if not builder.is_prepared():
    with _prepare_lock(data_dir, spec.name):
      builder = make()
      if not builder.is_prepared():
        builder.download_and_prepare()
  return builder


def _prepared_version_dir(spec: DatasetSpec, data_dir: str) -> str | None:
  """The newest data_dir/NAME[/CONFIG]/VERSION directory that holds a prepared data set."""
  root = os.path.join(data_dir, *spec.name.split("/"))
  if not os.path.isdir(root):
    return None
  versions = [
    v for v in os.listdir(root) if os.path.isfile(os.path.join(root, v, "dataset_info.json"))
  ]
  if not versions:
    return None
  newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
  return os.path.join(root, newest)


def _prepared_builder(spec: DatasetSpec, data_dir: str) -> tfds.core.DatasetBuilder:
  # Read from the prepared files' own metadata, not the data set's builder code: some
  # builders (coco) import TensorFlow just to declare their features.
  directory = _prepared_version_dir(spec, data_dir)
  if directory is None:
    raise FileNotFoundError(
      f"dataset: {spec.name!r} is not prepared in data_dir={data_dir!r} (looked in "
      f"{os.path.join(data_dir, *spec.name.split('/'))}). Prepare it once, where it can be "
      "downloaded, in the array_record format: "
      f"`tfds build {spec.name} --data_dir={data_dir} --file_format=array_record` "
      "(needs tensorflow), or point --config.data_dir at a directory that has it."
    )
  return tfds.builder_from_directory(directory)


def prepared_directory(name: str, *, data_dir: str | None = None) -> str:
  """The directory of data set `name`'s prepared files (data_dir/NAME[/CONFIG]/VERSION),
  preparing an offline data set first; what is derived from the data set (cached
  proposals) is stored beside them."""
  spec = get_spec(name)
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  if spec.builder:
    return str(_offline_builder(spec, data_dir).data_dir)
  return str(_prepared_builder(spec, data_dir).data_dir)


def data_source(name: str, split: str, *, data_dir: str | None = None):
  """A random-access source of {"image": uint8 [H, W, C], "label": int, ...} records.

  Args:
    name: a key of DATASETS.
    split: a TFDS split, e.g. "train", "test", "train[:90%]".
    data_dir: the TFDS data directory; None for TFDS's default.
  """
  spec = get_spec(name)
  data_dir = os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)
  if spec.builder:
    builder = _offline_builder(spec, data_dir)
  else:
    builder = _prepared_builder(spec, data_dir)
  try:
    return builder.as_data_source(split=split)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
      f"dataset: cannot read split {split!r} of {spec.name!r} from {builder.data_dir}: {e}. "
      "Random access needs the array_record format; convert with "
      f"`tfds convert_format --root_data_dir={data_dir} --out_file_format=array_record`."
    ) from e
