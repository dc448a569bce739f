"""Crops of photographs of varying size, on scikit-image's sample photographs."""

import numpy as np
import pytest
from skimage import data

from research.data import crops, pipeline


@pytest.fixture(scope="module")
def photos():
  """Real photographs of different sizes and aspect ratios, uint8 [H, W, 3]."""
  return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def test_random_resized_crop_gives_fixed_size_crops_of_the_photo(photos):
  crop = crops.RandomResizedCrop(64)
  for i, photo in enumerate(photos):
    out = crop({"image": photo, "label": 1}, np.random.default_rng(i))["image"]
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # A crop of the photo, resized: its mean colour stays within the photo's range.
    assert photo.min() <= out.mean() <= photo.max()
  again = crop({"image": photos[0]}, np.random.default_rng(0))["image"]
  np.testing.assert_array_equal(
    again, crop({"image": photos[0]}, np.random.default_rng(0))["image"]
  )


def test_resize_center_crop_equals_torchvision(photos):
  tvt = pytest.importorskip("torchvision.transforms")
  from PIL import Image  # pylint: disable=import-outside-toplevel

  ours = crops.ResizeCenterCrop(224, 256)
  theirs = tvt.Compose([tvt.Resize(256), tvt.CenterCrop(224)])
  for photo in photos:
    expected = np.asarray(theirs(Image.fromarray(photo)))
    got = ours({"image": photo})["image"]
    assert got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, expected)  # the same PIL resize, the same crop


def test_scale_jitter_crops_from_a_rescaled_photo(photos):
  crop = crops.ScaleJitterCrop(96, 128, 160)
  sizes = set()
  for seed in range(6):
    out = crop({"image": photos[1]}, np.random.default_rng(seed))["image"]
    assert out.shape == (96, 96, 3)
    sizes.add(out.tobytes())
  assert len(sizes) == 6
  with pytest.raises(ValueError, match="crop size 96 <= s_min <= s_max"):
    crops.ScaleJitterCrop(96, 64, 128)({"image": photos[1]}, np.random.default_rng(0))


def test_pca_lighting_shifts_each_image_by_one_colour():
  batch = {"image": np.zeros((4, 5, 5, 3), np.float32)}
  out = crops.PCALighting(0.1)(batch, [np.random.default_rng(i) for i in range(4)])["image"]
  assert np.all(out == out[:, :1, :1])  # the same RGB offset at every pixel
  assert np.abs(out).max() < 0.2 and len({tuple(o[0, 0]) for o in out}) == 4


def test_non_photographs_are_refused():
  with pytest.raises(ValueError, match=r"expected a uint8 \[H, W, C\] photograph"):
    crops.ResizeCenterCrop(8, 8)({"image": np.zeros((4, 4), np.uint8)})


class Photos:
  """A source of photographs of four sizes."""

  def __init__(self, photos):
    self.photos = photos

  def __len__(self):
    return 8

  def __getitem__(self, i):
    return {"image": self.photos[i % 4], "label": i % 4}


def test_pipeline_batches_photos_of_varying_size_through_crops(photos):
  stack = lambda b: {k: np.asarray(v) for k, v in b.items()}
  it = pipeline.train_iterator(
    Photos(photos),
    global_batch_size=4,
    seed=0,
    transform=stack,
    record_transform=crops.RandomResizedCrop(32),
  )
  batch = next(it)
  assert batch["image"].shape == (4, 32, 32, 3)
  evals = list(
    pipeline.eval_batches(
      Photos(photos),
      global_batch_size=3,
      transform=stack,
      record_transform=crops.ResizeCenterCrop(32, 40),
    )
  )
  assert [b["mask"].sum() for b in evals] == [3, 3, 2]
  assert evals[0]["image"].shape == (3, 32, 32, 3)
