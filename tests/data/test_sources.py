"""research.data.sources: a config's data set, by TFDS name or from a COCO-format file."""

from __future__ import annotations

import numpy as np
import pytest
from ml_collections import ConfigDict

from research.data import sources
from tests.conftest import multi_test_scenes, write_coco_format


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
  scenes = multi_test_scenes(6)
  train = write_coco_format(str(tmp_path_factory.mktemp("train")), scenes[:4])
  test = write_coco_format(str(tmp_path_factory.mktemp("test")), scenes[4:], stem="held")
  return scenes, train, test


def _config(train, test=None) -> ConfigDict:
  data = {"annotation_file": train[0], "image_dir": train[1]}
  if test:
    data |= {"test_annotation_file": test[0], "test_image_dir": test[1]}
  return ConfigDict({"dataset": "coco_format", "data": data})


def test_coco_format_splits_come_from_the_config_files(coco_files):
  scenes, train, test = coco_files
  spec, split = sources.from_config(_config(train, test))
  assert spec.name == "coco_format" and spec.num_classes == 10
  assert sources.class_names(spec) == tuple(str(d) for d in range(10))
  assert (len(split("train")), len(split("test"))) == (4, 2)
  record = split("test")[1]
  n = int(scenes[5]["num_objects"])
  np.testing.assert_allclose(record["boxes"], scenes[5]["boxes"][:n], atol=1e-4)
  np.testing.assert_array_equal(record["labels"], scenes[5]["labels"][:n])
  np.testing.assert_array_equal(record["image"][..., 0], scenes[5]["image"][..., 0])
  # TFDS-style slices, by count and by percent.
  assert [r["image_id"] for r in split("train[1:3]")] == [2, 3]
  assert [r["image_id"] for r in split("train[:50%]")] == [1, 2]
  assert len(split("test[-1:]")) == 1


def test_without_a_test_file_the_test_split_is_the_training_file(coco_files):
  _, train, _ = coco_files
  spec, split = sources.from_config(_config(train))
  assert len(split("test")) == len(split("train")) == 4


def test_tfds_names_resolve_to_their_specs():
  spec, _ = sources.from_config(ConfigDict({"dataset": "digit_scenes/multi", "data_dir": None}))
  assert spec.num_classes == 10 and spec.test_split == "test"
  assert sources.class_names(spec)[3] == "3"


def test_bad_coco_format_settings_name_the_setting(coco_files, tmp_path):
  _, train, _ = coco_files
  with pytest.raises(ValueError, match="data.annotation_file: dataset 'coco_format'"):
    sources.from_config(ConfigDict({"dataset": "coco_format", "data": {"image_dir": train[1]}}))
  with pytest.raises(FileNotFoundError, match="annotation file"):
    sources.from_config(_config((str(tmp_path / "none.json"), train[1])))
  _, split = sources.from_config(_config(train))
  with pytest.raises(ValueError, match="split: expected 'train' or 'test'"):
    split("validation")
  with pytest.raises(ValueError, match="dataset: unknown data set 'nope'"):
    sources.from_config(ConfigDict({"dataset": "nope"}))


def test_the_detection_task_reads_checked_schema_records_named_by_split_and_index(monkeypatch):
  from research.data import datasets  # pylint: disable=import-outside-toplevel

  config = ConfigDict({"dataset": "digit_scenes/multi", "task": "detection"})
  _, split = sources.from_config(config)
  record = split("test[:3]")[1]
  assert {"image", "boxes", "labels", "masks"} <= set(record) and "num_objects" not in record
  raw = datasets.data_source("digit_scenes/multi", "test")
  assert len(record["labels"]) == int(raw[1]["num_objects"])
  # A record whose label lies past the data set's 10 classes, read as the loop reads it.
  bad = dict(raw[0], labels=np.full_like(raw[0]["labels"], 12))
  monkeypatch.setattr(datasets, "data_source", lambda *a, **k: [raw[1], bad])
  _, split = sources.from_config(config)
  with pytest.raises(ValueError, match=r"^digit_scenes/multi train record 1: box 0 .*\[0, 10\)"):
    split("train")[1]
  # Classification reads the raw records.
  _, split = sources.from_config(ConfigDict({"dataset": "digit_scenes/multi"}))
  assert "num_objects" in split("train")[1]
