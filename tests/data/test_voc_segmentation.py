"""research.data.voc_segmentation: VOCdevkit's SegmentationClass PNGs and SBD's .mat masks,
read from a tiny devkit tree written here, and every malformed input's error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from research.data import sources
from research.data import voc_segmentation as voc

H, W = 6, 8
IDS = ("2007_000001", "2007_000002", "2008_000003", "2009_000004")


def _labels(seed: int) -> np.ndarray:
  """uint8 [H, W]: class ids 0..20 with a boundary (255) column."""
  labels = np.random.default_rng(seed).integers(0, 21, (H, W)).astype(np.uint8)
  labels[:, 3] = 255
  return labels


def _image(seed: int, h: int = H, w: int = W) -> np.ndarray:
  """uint8 [h, w, 3]: one flat colour per id (JPEG keeps it within a few levels)."""
  return np.broadcast_to(np.uint8([40 * seed + 20, 200 - 30 * seed, 90]), (h, w, 3)).copy()


def _palette_png(path, labels: np.ndarray, palette: np.ndarray = voc.COLOURS) -> None:
  image = Image.fromarray(labels, mode="P")
  image.putpalette(palette.ravel().tolist())
  image.save(path)


def _jpeg(path, seed: int, h: int = H, w: int = W) -> None:
  Image.fromarray(_image(seed, h, w)).save(path, quality=95)


def _devkit(tmp_path) -> str:
  """VOC2012/ with 4 ids (train: the first two, val: the last two) and SBD/ (train: ids 1
  and 3, val: id 0) with one .mat per id and no img/ (images from VOC's JPEGImages)."""
  root = tmp_path / "VOC2012"
  for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    os.makedirs(root / d)
  for k, i in enumerate(IDS):
    _jpeg(root / "JPEGImages" / f"{i}.jpg", k)
    _palette_png(root / "SegmentationClass" / f"{i}.png", _labels(k))
  splits = {"train": IDS[:2], "val": IDS[2:], "trainval": IDS}
  for name, ids in splits.items():
    (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
  return str(root)


def _sbd(tmp_path) -> str:
  import scipy.io  # pylint: disable=import-outside-toplevel

  sbd = tmp_path / "SBD"
  os.makedirs(sbd / "cls")
  for k, i in enumerate(IDS):
    labels = _labels(10 + k)
    labels[labels == 255] = 0  # SBD's masks have no boundaries
    gt = {"Segmentation": labels, "Boundaries": np.zeros(1), "CategoriesPresent": np.zeros(1)}
    scipy.io.savemat(str(sbd / "cls" / f"{i}.mat"), {"GTcls": gt})
  (sbd / "train.txt").write_text(f"{IDS[1]}\n{IDS[3]}\n")
  (sbd / "val.txt").write_text(f"{IDS[0]}\n")
  return str(sbd)


def _config(root: str, **data) -> ConfigDict:
  return ConfigDict(
    {"task": "segmentation", "dataset": "voc_segmentation", "data": {"root": root, **data}}
  )


def test_the_colour_map_is_vocs():
  assert voc.COLOURS.shape == (256, 3) and voc.COLOURS.dtype == np.uint8
  assert tuple(voc.COLOURS[0]) == (0, 0, 0) and tuple(voc.COLOURS[1]) == (128, 0, 0)
  assert tuple(voc.COLOURS[15]) == (192, 128, 128)  # person
  assert tuple(voc.COLOURS[255]) == (224, 224, 192)
  assert len({tuple(c) for c in voc.COLOURS}) == 256
  assert len(voc.CLASS_NAMES) == 21 and voc.CLASS_NAMES[20] == "tvmonitor"


def test_records_are_the_written_labels_and_images_in_split_order(tmp_path):
  root = _devkit(tmp_path)
  train, val = voc.VocSegmentation(root, "train"), voc.VocSegmentation(root, "val")
  assert train.ids == list(IDS[:2]) and val.ids == list(IDS[2:]) and len(val) == 2
  record = val[1]
  assert record["image"].dtype == np.uint8 and record["image"].shape == (H, W, 3)
  assert record["labels"].dtype == np.uint8
  np.testing.assert_array_equal(record["labels"], _labels(3))
  assert (record["labels"][:, 3] == 255).all()
  assert np.abs(record["image"].astype(int) - _image(3)).mean() < 4  # JPEG, lossy
  assert len(voc.VocSegmentation(root, "trainval")) == 4


def test_rgb_masks_in_vocs_colours_are_mapped_back_to_ids(tmp_path):
  root = _devkit(tmp_path)
  path = os.path.join(root, "SegmentationClass", f"{IDS[0]}.png")
  Image.fromarray(voc.COLOURS[_labels(0)]).save(path)
  np.testing.assert_array_equal(voc.VocSegmentation(root, "train")[0]["labels"], _labels(0))
  rgb = voc.COLOURS[_labels(0)]
  rgb[2, 5] = (1, 2, 3)
  Image.fromarray(rgb).save(path)
  with pytest.raises(ValueError, match=rf"{IDS[0]}.png: RGB mask with an unknown colour "
                     r"\(1, 2, 3\) at pixel \(y, x\) = \(2, 5\)"):  # fmt: skip
    voc.VocSegmentation(root, "train")[0]


def test_sbd_masks_and_the_fcn_split_voc_val_minus_sbd_train(tmp_path):
  pytest.importorskip("scipy.io")
  root, sbd = _devkit(tmp_path), _sbd(tmp_path)
  train = voc.VocSegmentation(root, "sbd:train", sbd_root=sbd)
  assert train.ids == [IDS[1], IDS[3]] and train.files[0][1].endswith(f"cls/{IDS[1]}.mat")
  expected = _labels(11)
  expected[expected == 255] = 0
  np.testing.assert_array_equal(train[0]["labels"], expected)
  assert train[0]["image"].shape == (H, W, 3)
  assert voc.VocSegmentation(root, "val-sbd:train", sbd_root=sbd).ids == [IDS[2]]
  with pytest.raises(ValueError, match=r"'sbd:train' reads SBD; set sbd_root"):
    voc.VocSegmentation(root, "sbd:train")
  # A .mat without GTcls.Segmentation, and one with an id outside 0..20, 255.
  import scipy.io  # pylint: disable=import-outside-toplevel

  path = os.path.join(sbd, "cls", f"{IDS[1]}.mat")
  scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((H, W), np.uint8)}})
  with pytest.raises(ValueError, match=rf"{IDS[1]}.mat: expected SBD's struct GTcls.*'GTinst'"):
    train[0]
  scipy.io.savemat(path, {"GTcls": {"Segmentation": np.full((H, W), 40, np.uint8)}})
  with pytest.raises(ValueError, match=rf"{IDS[1]}.mat: index 40 .*expected a class id 0..20"):
    train[0]


def test_from_config_gives_the_21_class_spec_and_the_configured_splits(tmp_path):
  root = _devkit(tmp_path)
  spec, split_source = sources.from_config(_config(root))
  assert spec.name == "voc_segmentation" and spec.num_classes == 21
  assert spec.class_names == voc.CLASS_NAMES and spec.image_shape == (None, None, 3)
  assert (spec.train_split, spec.test_split) == ("train", "test")
  train, test = split_source("train"), split_source("test")
  assert len(train) == 2 and len(test) == 2 and test.class_names == voc.CLASS_NAMES
  np.testing.assert_array_equal(test[0]["labels"], _labels(2))
  assert len(split_source("test[:1]")) == 1
  _, split_source = sources.from_config(_config(root, train_split="trainval", test_split="train"))
  assert len(split_source("train")) == 4
  np.testing.assert_array_equal(split_source("test")[1]["labels"], _labels(1))
  with pytest.raises(ValueError, match=r"splits 'train' \(data.train_split\) and 'test'"):
    split_source("val")
  with pytest.raises(ValueError, match=r"data.root: dataset 'voc_segmentation' reads"):
    sources.from_config(_config(""))
  with pytest.raises(FileNotFoundError, match=r"data.root: '.*nowhere' is no directory"):
    sources.from_config(_config(str(tmp_path / "nowhere")))


def test_tfds_voc_points_to_voc_segmentation():
  with pytest.raises(ValueError, match=r"'voc/2012' has no segmentation masks.*voc_segmentation"):
    sources.from_config(ConfigDict({"task": "segmentation", "dataset": "voc/2012"}))


def test_missing_root_split_file_and_files_name_the_path(tmp_path):
  root = _devkit(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"VOC2011: no such directory; expected a VOC"):
    voc.VocSegmentation(str(tmp_path / "VOC2011"), "train")
  with pytest.raises(FileNotFoundError, match=r"Segmentation/test.txt: no such split file"):
    voc.VocSegmentation(root, "test")
  os.remove(os.path.join(root, "JPEGImages", f"{IDS[1]}.jpg"))
  with pytest.raises(FileNotFoundError, match=rf"JPEGImages/{IDS[1]}.jpg: no such file; "
                     r"expected the image of every id in .*train.txt \(1 of 2 missing\)"):  # fmt: skip
    voc.VocSegmentation(root, "train")
  os.remove(os.path.join(root, "SegmentationClass", f"{IDS[2]}.png"))
  with pytest.raises(FileNotFoundError, match=rf"SegmentationClass/{IDS[2]}.png: no such file"):
    voc.VocSegmentation(root, "val")


def test_malformed_masks_name_the_file_and_what_was_expected(tmp_path):
  root = _devkit(tmp_path)
  source = voc.VocSegmentation(root, "train")
  path = os.path.join(root, "SegmentationClass", f"{IDS[0]}.png")
  Image.fromarray(_labels(0), mode="L").save(path)
  with pytest.raises(ValueError, match=rf"{IDS[0]}.png: a 'L' PNG; expected a palette \('P'\)"):
    source[0]
  labels = _labels(0)
  labels[1, 2] = 30
  _palette_png(path, labels)
  with pytest.raises(ValueError, match=rf"{IDS[0]}.png: index 30 at pixel \(y, x\) = \(1, 2\) "
                     r"\(1 such pixels\); expected a class id 0..20 or 255"):  # fmt: skip
    source[0]
  palette = voc.COLOURS.copy()
  palette[255] = (255, 255, 255)
  _palette_png(path, _labels(0), palette)
  with pytest.raises(ValueError, match=rf"{IDS[0]}.png: palette PNG with an unknown colour: "
                     r"index 255 .*colour \(255, 255, 255\); expected VOC's \(224, 224, 192\)"):  # fmt: skip
    source[0]
  _palette_png(path, np.zeros((H, W + 1), np.uint8))
  with pytest.raises(ValueError, match=rf"{IDS[0]}.png: mask of 6x9 \(HxW\) but its image "
                     rf".*{IDS[0]}.jpg is 6x8"):  # fmt: skip
    source[0]
