"""Detection records: adapters of digit_scenes/multi, VOC and COCO, the fixed-shape transform.

VOC and COCO records come from real TFDS data sources: the installed `Voc` and
`Coco` builders prepare a few hand-made examples (their split generators
patched, since the real data cannot be downloaded here) into array_record
files that `datasets.data_source` reads back, so records have exactly the
features and decoding of a user's prepared voc/2007 or coco/2017.
"""

import io
import logging
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.object_detection import coco, voc

from research.data import datasets, detection, digit_scenes, pipeline
from tests.conftest import multi_test_scenes


@pytest.fixture(scope="module")
def scenes():
  """The first 8 digit_scenes/multi test scenes, as the builder stores them."""
  return multi_test_scenes(8)


def _objects(scene):
  return detection.from_digit_scenes(scene)


def test_digit_scenes_adapter_drops_the_padding(scenes):
  for scene in scenes:
    record = _objects(scene)
    n = int(scene["num_objects"])
    assert record["boxes"].shape == (n, 4) and record["masks"].shape == (n, 128, 128)
    assert record["labels"].dtype == np.int32 and (record["labels"] >= 0).all()
    for box, mask in zip(record["boxes"], record["masks"]):
      np.testing.assert_array_equal(digit_scenes.ink_box(mask > 0), box)


def test_transform_pads_to_static_shapes_with_a_validity_mask(scenes):
  transform = detection.DetectionTransform(size=96, max_boxes=6, num_classes=10)
  for scene in scenes:
    out, n = transform(_objects(scene)), int(scene["num_objects"])
    assert out["image"].shape == (96, 96, 1) and out["image"].dtype == np.float32
    assert out["boxes"].shape == (6, 4) and out["masks"].shape == (6, 96, 96)
    np.testing.assert_array_equal(out["valid"], np.arange(6) < n)
    np.testing.assert_array_equal(out["labels"][:n], scene["labels"][:n])
    assert (out["labels"][n:] == -1).all() and (out["boxes"][n:] == 0).all()
    assert not out["masks"][n:].any()
    # A square image scales by exactly 96 / 128 on both axes, boxes too.
    np.testing.assert_array_equal(out["boxes"][:n], scene["boxes"][:n] * 0.75)
    np.testing.assert_array_equal(out["image_size"], [96, 96])
    np.testing.assert_array_equal(out["original_size"], [128, 128])
    assert 0 <= out["image"].min() and out["image"].max() <= 1


@pytest.mark.parametrize("size", [96, 160])
@pytest.mark.parametrize("flip", [False, True])
def test_boxes_stay_on_their_digits_ink_after_resize_and_flip(scenes, size, flip):
  transform = detection.RandomDetectionTransform(
    size=size, max_boxes=5, flip_probability=float(flip)
  )
  factor = size / 128
  for scene in scenes:
    out, n = transform(_objects(scene), np.random.default_rng(0)), int(scene["num_objects"])
    want = scene["boxes"][:n] * factor
    if flip:
      want = np.stack([size - want[:, 2], want[:, 1], size - want[:, 0], want[:, 3]], axis=1)
    np.testing.assert_allclose(out["boxes"][:n], want, atol=1e-4)
    image = out["image"][..., 0]
    for box, mask in zip(out["boxes"][:n], out["masks"][:n].astype(bool)):
      # The resized mask's ink fills the moved box (nearest neighbours may skip a thin tip)...
      np.testing.assert_allclose(digit_scenes.ink_box(mask), box, atol=2)
      # ... and lies on the resized image's bright digit, not on the dark background.
      assert image[mask].mean() > 0.3 > 0.1 > image[~mask].mean()


def test_flip_twice_is_the_identity_and_once_mirrors_the_ink(scenes):
  for scene in scenes[:4]:
    record = _objects(scene)
    once, twice = detection.hflip(record), detection.hflip(detection.hflip(record))
    for key in record:
      np.testing.assert_array_equal(twice[key], record[key])
    np.testing.assert_array_equal(once["image"], record["image"][:, ::-1])
    for box, mask in zip(once["boxes"], once["masks"]):
      np.testing.assert_array_equal(digit_scenes.ink_box(mask > 0), box)


def test_a_flipped_record_transforms_to_the_mirror_image(scenes):
  transform = detection.DetectionTransform(size=96, max_boxes=5)
  for scene in scenes[:4]:
    plain = transform(_objects(scene))
    flipped = transform(detection.hflip(_objects(scene)))
    # PIL's bilinear filter is symmetric; rounding may differ by one grey level.
    np.testing.assert_allclose(flipped["image"], plain["image"][:, ::-1], atol=1.01 / 255)


def test_empty_ground_truth_is_valid(scenes):
  record = {
    "image": scenes[0]["image"],
    "boxes": np.zeros((0, 4), np.float32),
    "labels": np.zeros((0,), np.int64),
    "masks": np.zeros((0, 128, 128), np.uint8),
  }
  assert detection.hflip(record)["boxes"].shape == (0, 4)
  for transform in (
    detection.DetectionTransform(size=64, max_boxes=3),
    lambda r: detection.RandomDetectionTransform(64, 3, flip_probability=1.0)(
      r, np.random.default_rng(0)
    ),
  ):
    out = transform(record)
    assert not out["valid"].any() and (out["labels"] == -1).all()
    assert out["boxes"].shape == (3, 4) and out["masks"].shape == (3, 64, 64)
    assert not out["masks"].any()


def test_more_objects_than_max_boxes_keeps_the_largest_with_their_masks(scenes, monkeypatch):
  monkeypatch.setattr(detection, "_max_boxes_warned", False)
  scene = next(s for s in scenes if s["num_objects"] == 5)
  boxes = scene["boxes"][:5]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  largest = np.sort(np.argsort(-area)[:2])
  assert not np.array_equal(largest, [0, 1])  # else this scene could not tell largest from first
  out = detection.DetectionTransform(size=128, max_boxes=2)(_objects(scene))
  assert out["valid"].all()
  np.testing.assert_array_equal(out["boxes"], boxes[largest])
  np.testing.assert_array_equal(out["labels"], scene["labels"][largest])
  np.testing.assert_array_equal(out["masks"], scene["instance_masks"][largest])


def test_keep_largest_counts_the_area_inside_the_image_and_keeps_flags_aligned(monkeypatch):
  monkeypatch.setattr(detection, "_max_boxes_warned", False)
  masks = np.zeros((4, 10, 10), np.uint8)
  masks[np.arange(4), np.arange(4), 0] = 1  # mask k marks row k: which object it belongs to
  record = {
    "image": np.zeros((10, 10, 1), np.uint8),
    # Areas inside the image: 4, 30 (60 in all, half of it outside), 25, 1.
    "boxes": np.array([[0, 0, 2, 2], [-6, 0, 6, 5], [5, 5, 10, 10], [9, 9, 10, 10]], np.float32),
    "labels": np.array([0, 1, 2, 3]),
    "difficult": np.array([True, False, True, False]),
    "masks": masks,
  }
  out = detection.keep_largest(detection.check_record(record), 3)
  np.testing.assert_array_equal(out["boxes"], record["boxes"][[0, 1, 2]])
  np.testing.assert_array_equal(out["labels"], [0, 1, 2])
  np.testing.assert_array_equal(out["difficult"], [True, False, True])
  np.testing.assert_array_equal(out["masks"], masks[[0, 1, 2]])
  out = detection.keep_largest(detection.check_record(record), 2)
  np.testing.assert_array_equal(out["labels"], [1, 2])  # file order kept among the kept
  np.testing.assert_array_equal(out["difficult"], [False, True])
  np.testing.assert_array_equal(out["masks"], masks[[1, 2]])
  # Of equal areas the earlier box stays.
  same = {**record, "boxes": np.array([[0, 0, 2, 2]] * 4, np.float32)}
  np.testing.assert_array_equal(detection.keep_largest(same, 2)["labels"], [0, 1])


def test_too_many_objects_warn_once_per_process_with_the_count(monkeypatch, caplog):
  monkeypatch.setattr(detection, "_max_boxes_warned", False)
  transform = detection.DetectionTransform(size=8, max_boxes=2)
  record = _record(
    boxes=np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], np.float32),
    labels=np.array([0, 1, 2]),
    image_id=np.int64(42),
  )
  with caplog.at_level(logging.WARNING, logger=detection.__name__):
    transform(record)
    detection.RandomDetectionTransform(size=8, max_boxes=1)(record, np.random.default_rng(0))
    transform(_record())  # 2 objects: no warning either way
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "record (image_id 42) has 3 objects, more than max_boxes=2" in warnings[0].getMessage()


def test_wide_image_fits_the_canvas_padded_at_bottom_and_clipped_boxes():
  image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
  record = {
    "image": image,
    "boxes": np.array([[9, 3, 30, 40], [80, 50, 95, 70]], np.float32),  # the 2nd overhangs
    "labels": np.array([3, 0]),
    "difficult": np.array([True, False]),
  }
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  out = detection.DetectionTransform(size=45, max_boxes=4, mean=mean, std=std)(record)
  np.testing.assert_array_equal(out["image_size"], [30, 45])
  np.testing.assert_array_equal(out["boxes"][:2], [[4.5, 1.5, 15, 20], [40, 25, 45, 30]])
  np.testing.assert_array_equal(out["difficult"], [True, False, False, False])
  assert (out["image"][30:] == 0).all()  # padding: the mean colour
  small = np.asarray(Image.fromarray(image).resize((45, 30), Image.Resampling.BILINEAR))
  want = (small / np.float32(255) - np.float32(mean)) / np.float32(std)
  np.testing.assert_allclose(out["image"][:30], want, rtol=1e-5, atol=1e-5)


def test_grey_images_repeat_to_three_channels(scenes):
  out = detection.DetectionTransform(size=64, max_boxes=5, channels=3)(_objects(scenes[0]))
  assert out["image"].shape == (64, 64, 3)
  np.testing.assert_array_equal(out["image"][..., 0], out["image"][..., 2])


def _record(**changes):
  record = {
    "image": np.zeros((20, 30, 3), np.uint8),
    "boxes": np.array([[1, 2, 5, 6], [0, 0, 30, 20]], np.float32),
    "labels": np.array([0, 1]),
  }
  return {**record, **changes}


@pytest.mark.parametrize(
  "changes, match",
  [
    ({"boxes": np.array([[5, 2, 1, 6], [0, 0, 1, 1]], np.float32)}, r"box 0 .*x1 < x2"),
    ({"boxes": np.array([[1, 2, 5, 6], [0, np.nan, 1, 1]], np.float32)}, r"box 1 .*finite"),
    ({"boxes": np.zeros((2, 5), np.float32)}, r"'boxes' must be \[G, 4\].*\(2, 5\)"),
    ({"boxes": np.zeros((4,), np.float32)}, r"'boxes' must be \[G, 4\].*\(4,\)"),
    ({"labels": np.array([0, 1, 2])}, r"'labels' must have shape \[2\]"),
    ({"labels": np.array([0.0, 1.0])}, r"'labels' must be integers"),
    ({"labels": np.array([0, 7])}, r"box 1 .* has label 7; expected a class id in \[0, 5\)"),
    ({"image": np.zeros((20, 30, 4), np.uint8)}, r"\[H, W, 1\] or \[H, W, 3\].*\(20, 30, 4\)"),
    ({"masks": np.zeros((2, 20, 31), np.uint8)}, r"'masks' must have shape \[2, 20, 30\]"),
    ({"masks": np.zeros((1, 20, 30), np.uint8)}, r"'masks' must have shape \[2, 20, 30\]"),
    (
      {"masks": np.stack([np.zeros((20, 30), np.uint8), np.ones((20, 30), np.uint8)])},
      r"'masks'\[0\] is empty \(no pixel set\) for box 0 \[1.0, 2.0, 5.0, 6.0\]",
    ),
    ({"crowd": np.zeros((3,), bool)}, r"'crowd' must have shape \[2\]"),
    ({"image": np.zeros((20, 30, 3), np.float32)}, r"'image' must be uint8 \[H, W, C\]"),
    ({"image": np.zeros((20, 30), np.uint8)}, r"'image' must be uint8 \[H, W, C\]"),
  ],
)
def test_bad_records_raise_errors_naming_the_key(changes, match):
  with pytest.raises(ValueError, match=match):
    detection.DetectionTransform(size=16, max_boxes=4, num_classes=5, channels=3)(
      _record(**changes)
    )


# The 20x30 (height x width) image of _record; box 1 is the bad one, the other is fine.
BAD_BOXES = [
  ([3, 2, 3, 6], r"\(3, 2, 3, 6\) has a zero or negative width"),
  ([3, 6, 5, 2], r"\(3, 6, 5, 2\) has a zero or negative width .* expected x1 < x2 and y1 < y2"),
  ([3, np.nan, 5, 6], r"\(3, nan, 5, 6\) has a NaN or infinite coordinate; expected finite"),
  ([3, 2, np.inf, 6], r"\(3, 2, inf, 6\) has a NaN or infinite coordinate"),
  ([30, 2, 35, 6], r"\(30, 2, 35, 6\) lies entirely outside the 20x30 \(height x width\)"),
  ([-5, 2, 0, 6], r"\(-5, 2, 0, 6\) lies entirely outside .* expected part of it inside"),
  ([3, 20, 5, 26], r"\(3, 20, 5, 26\) lies entirely outside"),
  ([3, -9, 5, -1], r"\(3, -9, 5, -1\) lies entirely outside"),
]


@pytest.mark.parametrize("box, match", BAD_BOXES)
def test_bad_boxes_of_a_source_name_the_record_its_image_id_and_the_box(box, match):
  records = [_record(), _record(boxes=np.array([[1, 2, 5, 6], box], np.float32), image_id=7)]
  source = detection.DetectionSource(records, lambda r: r, name="toy", num_classes=5)
  source[0]  # the good record passes
  box_1 = r"box 1 \(x1, y1, x2, y2\) = "
  with pytest.raises(ValueError, match=r"^toy record 1 \(image_id 7\): " + box_1 + match):
    source[1]
  # The transforms check the same, naming the image by its image_id.
  with pytest.raises(ValueError, match=r"^record \(image_id 7\): " + box_1 + match):
    detection.DetectionTransform(size=16, max_boxes=4)(records[1])
  with pytest.raises(ValueError, match=r"^record \(image_id 7\): " + box_1 + match):
    detection.RandomDetectionTransform(size=16, max_boxes=4)(records[1], np.random.default_rng(0))


@pytest.mark.parametrize(
  "labels, match",
  [
    ([0, 5], r"box 1 \(x1, y1, x2, y2\) = \(0, 0, 30, 20\) has label 5; .* in \[0, 5\)"),
    ([-1, 0], r"box 0 \(x1, y1, x2, y2\) = \(1, 2, 5, 6\) has label -1; .* in \[0, 5\)"),
  ],
)
def test_labels_out_of_range_name_the_record_and_the_box(labels, match):
  source = detection.DetectionSource([_record(labels=np.array(labels))], lambda r: r, num_classes=5)
  with pytest.raises(ValueError, match=r"^record 0: " + match):
    source[0]
  # Without num_classes a negative label still is no class id (-1 marks padding).
  if labels[0] < 0:
    with pytest.raises(ValueError, match=r"^record 0: box 0 .* expected a class id >= 0"):
      detection.DetectionSource([_record(labels=np.array(labels))], lambda r: r)[0]


def test_the_first_of_several_bad_boxes_is_named_with_their_count():
  boxes = np.array([[1, 2, 5, 6], [4, 4, 4, 4], [0, 0, 0, 0], [1, 1, 2, 2]], np.float32)
  with pytest.raises(ValueError, match=r"box 1 .*\(2 of the 4 boxes fail this check\)"):
    detection.check_record(_record(boxes=boxes, labels=np.zeros(4, np.int64)))


def test_boxes_partly_outside_the_image_are_valid_and_clipped():
  boxes = np.array([[-4, -3, 2, 2], [25, 15, 40, 30], [29.5, 0, 30.5, 1]], np.float32)
  record = _record(boxes=boxes, labels=np.array([0, 1, 2]))
  out = detection.DetectionTransform(size=30, max_boxes=3)(record)  # scale 1
  np.testing.assert_array_equal(out["boxes"], [[0, 0, 2, 2], [25, 15, 30, 20], [29.5, 0, 30, 1]])
  assert out["valid"].all()


@pytest.mark.parametrize(
  "transform, shape, match",
  [
    (dict(channels=3), (20, 30, 2), r"\[H, W, 1\] or \[H, W, 3\]; received shape \(20, 30, 2\)"),
    # ImageNet-style normalization: RGBA would fail to broadcast against the 3 means.
    (dict(mean=(0.5,) * 3, std=(0.2,) * 3), (20, 30, 4), r"\[H, W, 1\] or \[H, W, 3\]; .*4\)"),
    (dict(), (20, 30), r"uint8 \[H, W, C\]; received uint8 of shape \(20, 30\)"),
    (dict(), (2, 20, 30, 3), r"uint8 \[H, W, C\]; received uint8 of shape \(2, 20, 30, 3\)"),
  ],
)
def test_images_of_the_wrong_rank_or_channels_name_both_shapes(transform, shape, match):
  record = _record(image=np.zeros(shape, np.uint8), image_id=3)
  with pytest.raises(ValueError, match=r"^record \(image_id 3\): 'image' must be " + match):
    detection.DetectionTransform(size=16, max_boxes=4, **transform)(record)


def test_a_source_checks_its_images_channels():
  source = detection.DetectionSource([_record(image=np.zeros((20, 30, 1), np.uint8))], lambda r: r)
  assert source[0]["image"].shape == (20, 30, 1)
  source.channels = 3
  with pytest.raises(ValueError, match=r"^record 0: 'image' must be \[H, W, 3\]; .*\(20, 30, 1\)"):
    source[0]


def _tfds_coco(yxyx, labels, crowd):
  """A TFDS coco/2017 record of a 10x20 image (normalized (ymin, xmin, ymax, xmax) boxes)."""
  return {
    "image": np.zeros((10, 20, 3), np.uint8),
    "image/id": 9,
    "objects": {"bbox": np.array(yxyx, np.float32), "label": labels, "is_crowd": crowd},
  }


def test_coco_adapter_drops_boxes_of_zero_width_or_height(caplog):
  yxyx = [[0, 0, 0.5, 0.5], [0.2, 0.3, 0.2, 0.6], [0.1, 0.4, 0.9, 0.4], [0.5, 0.5, 1, 1]]
  with caplog.at_level(logging.DEBUG, logger=detection.__name__):
    record = detection.from_coco(_tfds_coco(yxyx, [1, 2, 3, 4], [False, True, True, True]))
  np.testing.assert_array_equal(record["boxes"], [[0, 0, 10, 5], [10, 5, 20, 10]])
  np.testing.assert_array_equal(record["labels"], [1, 4])
  np.testing.assert_array_equal(record["crowd"], [False, True])
  assert [r.levelno for r in caplog.records] == [logging.DEBUG]
  assert "image_id 9: dropped 2 of 4 boxes" in caplog.records[0].getMessage()
  # Only degenerate boxes go: a NaN one stays, for the check to name.
  source = detection.DetectionSource(
    [_tfds_coco([[0, 0, 0.5, 0.5], [np.nan, 0, 1, 1]], [0, 1], [False, False])],
    detection.from_coco,
    name="coco/2017",
  )
  with pytest.raises(ValueError, match=r"^coco/2017 record 0 \(image_id 9\): box 1 .*NaN"):
    source[0]


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def _prepare(monkeypatch, builder_cls, name, data_dir, examples):
  """Prepares `name` with the real builder, its test split being `examples` (key, example)."""
  monkeypatch.setattr(builder_cls, "_split_generators", lambda self, dl: {"test": iter(examples)})
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  skip = tfds.download.ComputeStatsMode.SKIP
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(compute_stats=skip))


def _rgb(scene):
  return np.repeat(scene["image"], 3, axis=-1)


def _normalized_yxyx(boxes, h, w):
  return [tfds.features.BBox(y1 / h, x1 / w, y2 / h, x2 / w) for x1, y1, x2, y2 in boxes]


def test_voc_records_of_a_prepared_tfds_data_set(scenes, tmp_path, monkeypatch):
  examples = []
  for i, scene in enumerate(scenes[:3]):
    n = int(scene["num_objects"]) if i else 0  # VOC 2012's test images have no objects
    one_based = scene["boxes"][:n] + np.array([1, 1, 0, 0], np.float32)  # VOC's xml indices
    objects = [
      {"label": int(c), "bbox": b, "pose": 0, "is_truncated": False, "is_difficult": k == 0}
      for k, (c, b) in enumerate(zip(scene["labels"][:n], _normalized_yxyx(one_based, 128, 128)))
    ]
    labels = sorted({o["label"] for o in objects})
    example = {"image": _png(_rgb(scene)), "image/filename": f"{i}.jpg", "objects": objects}
    examples.append((str(i), {**example, "labels": labels, "labels_no_difficult": labels}))
  _prepare(monkeypatch, voc.Voc, "voc/2007", str(tmp_path), examples)

  raw = datasets.data_source("voc/2007", "test", data_dir=str(tmp_path))
  source = detection.detection_source("voc/2007", "test", data_dir=str(tmp_path))
  assert len(source) == len(raw) == 3
  assert (source.name, source.num_classes, source.channels) == ("voc/2007 test", 20, 3)
  for i in range(3):
    record, k = source[i], int(raw[i]["image/filename"].decode()[0])
    scene, n = scenes[k], int(scenes[k]["num_objects"]) if k else 0
    np.testing.assert_array_equal(record["image"], _rgb(scene))
    np.testing.assert_allclose(record["boxes"], scene["boxes"][:n].reshape(-1, 4), atol=1e-4)
    np.testing.assert_array_equal(record["labels"], scene["labels"][:n])
    np.testing.assert_array_equal(record["difficult"], np.arange(n) == 0)
    out = detection.DetectionTransform(size=64, max_boxes=8, num_classes=20)(record)
    assert out["valid"].sum() == n and out["difficult"].shape == (8,)


def test_coco_records_of_a_prepared_tfds_data_set(scenes, tmp_path, monkeypatch):
  # Coco._info names tf.int64, the one use of TensorFlow in building its features; numpy's
  # int64 is what TFDS makes of it. With TensorFlow installed this patch changes nothing.
  monkeypatch.setattr(coco, "tf", types.SimpleNamespace(int64=np.int64))
  examples = []
  for i, scene in enumerate(scenes[:3]):
    n = int(scene["num_objects"])
    objects = [
      {"id": 10 * i + k, "area": 1, "label": int(c), "bbox": b, "is_crowd": k == 1}
      for k, (c, b) in enumerate(
        zip(scene["labels"][:n], _normalized_yxyx(scene["boxes"], 128, 128))
      )
    ]
    example = {"image": _png(_rgb(scene)), "image/filename": f"{i}.jpg", "image/id": 100 + i}
    examples.append((str(i), {**example, "objects": objects}))
  _prepare(monkeypatch, coco.Coco, "coco/2017", str(tmp_path), examples)
  # Reading runs no builder code (so needs no TensorFlow): the files' own metadata suffices.
  monkeypatch.undo()

  source = detection.detection_source("coco/2017", "test", data_dir=str(tmp_path))
  assert len(source) == 3
  for i in range(3):
    record = source[i]
    scene = scenes[int(record["image_id"]) - 100]
    n = int(scene["num_objects"])
    np.testing.assert_array_equal(record["image"], _rgb(scene))
    np.testing.assert_allclose(record["boxes"], scene["boxes"][:n], atol=1e-4)
    np.testing.assert_array_equal(record["labels"], scene["labels"][:n])
    np.testing.assert_array_equal(record["crowd"], np.arange(n) == 1)
    out = detection.DetectionTransform(size=64, max_boxes=8, num_classes=80)(record)
    assert out["crowd"].sum() == (n > 1) and out["image_id"] == record["image_id"]


def test_unknown_detection_data_set_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"'mnist' has no detection adapter.*'coco/2017'"):
    detection.detection_source("mnist", "test")


def test_pipeline_batches_detection_records(scenes):
  source = detection.DetectionSource(scenes, detection.from_digit_scenes)
  augment = detection.RandomDetectionTransform(size=64, max_boxes=5)
  make = lambda: pipeline.train_iterator(
    source, global_batch_size=4, seed=0, transform=lambda b: b, record_transform=augment
  )
  a, b = make(), make()
  for _ in range(3):
    x, y = next(a), next(b)
    assert x["image"].shape == (4, 64, 64, 1) and x["masks"].shape == (4, 5, 64, 64)
    assert x["valid"].shape == (4, 5) and x["labels"].shape == (4, 5)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  batches = list(
    pipeline.eval_batches(
      source,
      global_batch_size=3,
      transform=lambda b: b,
      record_transform=detection.DetectionTransform(size=64, max_boxes=5),
    )
  )
  assert len(batches) == 3 and batches[-1]["mask"].tolist() == [True, True, False]
  counts = np.concatenate([b["valid"].sum(1)[b["mask"]] for b in batches])
  np.testing.assert_array_equal(counts, [s["num_objects"] for s in scenes])


@pytest.mark.parametrize("hw", [(333, 500), (500, 375), (400, 600), (200, 900), (1200, 700)])
def test_shorter_side_resize_gives_torchvisions_image_sizes(hw):
  """min_size / max_size: the Faster R-CNN paper's 600 / 1,000 as torchvision's
  GeneralizedRCNNTransform computes them, on a 1,024 canvas."""
  torch = pytest.importorskip("torch")
  detection_models = pytest.importorskip("torchvision.models.detection")
  transform = detection_models.transform.GeneralizedRCNNTransform(
    600, 1000, image_mean=[0.0] * 3, image_std=[1.0] * 3
  )
  image = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
  record = {"image": image, "boxes": np.array([[10, 20, 90, 120]], np.float32), "labels": [1]}
  out = detection.DetectionTransform(size=1024, max_boxes=2, min_size=600, max_size=1000)(record)
  batch, _ = transform.eval()([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
  h, w = batch.image_sizes[0]
  np.testing.assert_array_equal(out["image_size"], [h, w])
  assert out["image"].shape == (1024, 1024, 3) and min(h, w) <= 600 and max(h, w) <= 1000
  np.testing.assert_allclose(
    out["boxes"][0], [10 * w / hw[1], 20 * h / hw[0], 90 * w / hw[1], 120 * h / hw[0]], rtol=1e-6
  )


def test_bad_min_or_max_size_names_both():
  record = {"image": np.zeros((8, 8, 3), np.uint8), "boxes": np.zeros((0, 4)), "labels": []}
  with pytest.raises(ValueError, match=r"max_size <= size .* max_size=2000, size=1024"):
    detection.DetectionTransform(size=1024, max_boxes=2, min_size=600, max_size=2000)(record)
