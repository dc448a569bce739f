"""YOLO's augmentation: boxes follow the pixels, objects pushed out go, HSV factors hold."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color

from research.data import augment, detection


def _record(channels=1):
  image = np.zeros((100, 120, channels), np.uint8)
  image[20:50, 30:70] = 200  # one bright object
  image[90:100, 0:10] = 100  # one at the bottom-left corner
  return {
    "image": image,
    "boxes": np.array([[30, 20, 70, 50], [0, 90, 10, 100]], np.float32),
    "labels": np.array([3, 7], np.int32),
    "difficult": np.array([False, True]),
    "masks": (image[None, ..., 0] == np.array([200, 100])[:, None, None]).astype(np.uint8),
  }


@pytest.mark.parametrize("seed", range(6))
def test_boxes_and_masks_follow_the_pixels(seed):
  rng = np.random.default_rng(seed)
  out = augment.scale_translate(_record(), rng, scale=0.2, translate=0.2)
  assert out["image"].shape == (100, 120, 1)
  bright = np.argwhere(out["image"][..., 0] > 150)
  kept = list(out["labels"])
  if 3 in kept:
    box = out["boxes"][kept.index(3)]
    (y1, x1), (y2, x2) = bright.min(0), bright.max(0) + 1
    np.testing.assert_allclose(box, [x1, y1, x2, y2], atol=1.5)
    mask = np.argwhere(out["masks"][kept.index(3)])
    np.testing.assert_allclose([*mask.min(0)[::-1], *(mask.max(0) + 1)[::-1]], box, atol=1.5)
  assert len(out["boxes"]) == len(out["labels"]) == len(out["difficult"]) == len(out["masks"])


def test_an_object_pushed_out_of_view_is_dropped_with_its_label_and_flags():
  class Shift:  # the largest scale and a translation to the bottom-right corner
    def uniform(self, low, high, size=None):
      return np.full(size, high) if size else high

  out = augment.scale_translate(_record(), Shift(), scale=0.1, translate=0.2)
  # Scaled by 1.1 about the centre and moved by (24, 20): the corner object leaves.
  np.testing.assert_array_equal(out["labels"], [3])
  np.testing.assert_array_equal(out["difficult"], [False])
  want = 1.1 * (np.array([30, 20, 70, 50]) - [60, 50, 60, 50]) + [84, 70, 84, 70]
  np.testing.assert_allclose(out["boxes"][0], np.minimum(want, [120, 100, 120, 100]), atol=1e-4)


def test_exposure_and_saturation_by_factors_within_the_limits():
  rng = np.random.default_rng(0)
  grey = np.full((8, 8, 1), 100, np.uint8)
  values = [
    augment.hsv_jitter(grey, rng, exposure=1.5, saturation=1.5)[0, 0, 0] for _ in range(200)
  ]
  assert 100 / 1.5 - 1 <= min(values) < 90 and 110 < max(values) <= 150 + 1
  rgb = np.zeros((4, 4, 3), np.uint8)
  rgb[...] = (200, 100, 50)
  out = augment.hsv_jitter(rgb, rng, exposure=1.5, saturation=1.5)
  hue_in, hue_out = color.rgb2hsv(rgb)[0, 0, 0], color.rgb2hsv(out)[0, 0, 0]
  assert hue_out == pytest.approx(hue_in, abs=0.01)
  assert np.array_equal(augment.hsv_jitter(rgb, rng, exposure=1, saturation=1), rgb)


def test_the_training_transform_applies_it_with_fixed_shapes_and_rejects_bad_values():
  t = detection.RandomDetectionTransform(
    size=64, max_boxes=4, flip_probability=0.0, scale_jitter=0.2, translate=0.2, exposure=1.5
  )
  out = t(_record(), np.random.default_rng(1))
  assert out["image"].shape == (64, 64, 1) and out["boxes"].shape == (4, 4)
  with pytest.raises(ValueError, match="scale_translate: scale and translate"):
    augment.scale_translate(_record(), np.random.default_rng(0), scale=1.5, translate=0)
  with pytest.raises(ValueError, match="exposure and saturation are factors >= 1"):
    augment.hsv_jitter(_record()["image"], np.random.default_rng(0), exposure=0.5, saturation=1)
