"""research.data.segmentation: the digit scenes' adapter and the transforms that keep image
and labels aligned."""

from __future__ import annotations

import numpy as np
import pytest

from research.data import datasets
from research.data import segmentation as data


def _record(h: int = 5, w: int = 7) -> dict:
  """Image and labels that both encode each pixel's position, so a crop or flip that moved
  one without the other shows."""
  position = np.arange(h * w).reshape(h, w)
  return {"image": (position % 250)[..., None].astype(np.uint8), "labels": position % 250}


def test_digit_scenes_labels_are_the_semantic_mask_with_eleven_classes():
  spec = data.segmentation_spec("digit_scenes/multi")
  assert spec.num_classes == 11 and spec.class_names == ("background", *map(str, range(10)))
  raw = datasets.data_source("digit_scenes/multi", "test[:3]")
  source = data.segmentation_source("digit_scenes/multi", "test[:3]")
  assert len(source) == 3
  for i in range(3):
    np.testing.assert_array_equal(source[i]["labels"], raw[i]["semantic_mask"][..., 0])
    np.testing.assert_array_equal(source[i]["image"], raw[i]["image"])
    digits = raw[i]["labels"][: raw[i]["num_objects"]]
    assert set(np.unique(source[i]["labels"])) == {0, *(digits + 1)}


def test_random_crops_and_flips_move_image_and_labels_together():
  record = _record()
  crop = data.RandomSegmentationCrop(crop_size=4, flip_probability=0.5, fill=(9,))
  flips = 0
  for seed in range(20):
    out = crop(record, np.random.default_rng(seed))
    assert out["image"].shape == (4, 4, 1) and out["labels"].shape == (4, 4)
    np.testing.assert_array_equal(out["image"][..., 0], out["labels"])
    flips += out["labels"][0, 0] > out["labels"][0, 1]
  assert 0 < flips < 20
  # Smaller than the crop: padded at the bottom and right, image with the fill, labels 255.
  out = data.RandomSegmentationCrop(crop_size=8)(record, np.random.default_rng(0))
  np.testing.assert_array_equal(out["labels"][:5, :7], record["labels"])
  assert (out["labels"][5:] == 255).all() and (out["labels"][:, 7:] == 255).all()
  assert (out["image"][5:] == 0).all()


def test_evaluation_pads_to_one_canvas_and_the_batch_transform_normalizes():
  out = data.PadTo(8, fill=(3,))(_record())
  assert out["image"].shape == (8, 8, 1) and (out["image"][5:] == 3).all()
  assert (out["labels"][:, 7:] == 255).all()
  with pytest.raises(ValueError, match=r"a 5x7 image does not fit the 6x6 evaluation canvas"):
    data.PadTo(6)(_record())
  transform = data.SegmentationTransform(mean=(0.2,), std=(0.5,), channels=3)
  batch = transform({k: v[None] for k, v in _record().items()})
  assert batch["image"].shape == (1, 5, 7, 3) and batch["labels"].dtype == np.int32
  expected = (_record()["image"][..., 0] / 255 - 0.2) / 0.5
  np.testing.assert_allclose(batch["image"][0, ..., 2], expected, rtol=1e-6)
  # The padding colour normalizes to 0: the mean.
  fill = transform.fill(3)
  assert fill.tolist() == [51, 51, 51]
