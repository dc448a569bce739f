"""A COCO-format data set written from digit_scenes/multi test scenes reads back as the scenes."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from research.data import coco_format, detection
from tests.conftest import multi_test_scenes

# Category ids with gaps, as COCO's, and not in order in the file: digit d has id 3 d + 1.
CATEGORIES = [{"id": 3 * d + 1, "name": f"digit {d}"} for d in (9, 4, 0, 1, 2, 3, 5, 6, 7, 8)]
RECTANGLE = [3.0, 2.0, 8.0, 2.0, 8.0, 5.0, 3.0, 5.0]  # a polygon covering rows 2..4, columns 3..7


@pytest.fixture(scope="module")
def scenes():
  """The first 4 digit_scenes/multi test scenes, as the builder stores them."""
  return multi_test_scenes(4)


def _uncompressed_rle(mask):
  """uint8 [H, W] -> COCO's uncompressed RLE: run lengths in column-major order, zeros first."""
  flat = mask.T.reshape(-1)
  edges = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
  return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def _annotation_json(scenes):
  """Scene i is image id 10 + i; image 99 has no objects; image 50 holds one polygon."""
  images, annotations = [], []
  for i, scene in enumerate(scenes):
    image_id = 10 + i
    images.append({"id": image_id, "file_name": f"scene{i}.png", "width": 128, "height": 128})
    for k in range(int(scene["num_objects"])):
      x1, y1, x2, y2 = scene["boxes"][k].tolist()
      mask = scene["instance_masks"][k]
      if k % 2:
        segmentation = _uncompressed_rle(mask)
      else:
        rle = mask_utils.encode(np.asfortranarray(mask))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
      annotations.append(
        {
          "id": 100 * image_id + k,
          "image_id": image_id,
          "category_id": 3 * int(scene["labels"][k]) + 1,
          "bbox": [x1, y1, x2 - x1, y2 - y1],
          "area": int(mask.sum()),
          "iscrowd": int(k == 2),
          "segmentation": segmentation,
        }
      )
  images.append({"id": 99, "file_name": "empty.png", "width": 128, "height": 128})
  images.append({"id": 50, "file_name": "small.png", "width": 12, "height": 10})
  annotations.append(
    {"id": 7, "image_id": 50, "category_id": 1, "bbox": [3, 2, 5, 3], "segmentation": [RECTANGLE]}
  )
  return {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}


def _write(tmp_path, scenes, data=None):
  """Writes the images and `data` (default: the scenes' JSON); returns (json path, image dir)."""
  image_dir = tmp_path / "images"
  image_dir.mkdir(exist_ok=True)
  for i, scene in enumerate(scenes):
    Image.fromarray(scene["image"][..., 0]).save(image_dir / f"scene{i}.png")
  Image.fromarray(np.zeros((128, 128), np.uint8)).save(image_dir / "empty.png")
  Image.fromarray(np.full((10, 12), 200, np.uint8)).save(image_dir / "small.png")
  path = tmp_path / "annotations.json"
  path.write_text(json.dumps(_annotation_json(scenes) if data is None else data))
  return str(path), str(image_dir)


def test_scenes_read_back_with_their_boxes_labels_and_masks(scenes, tmp_path):
  source = coco_format.CocoFormat(*_write(tmp_path, scenes), masks=True, channels=1)
  assert len(source) == 6 and source.image_ids == (10, 11, 12, 13, 50, 99)
  assert source.num_classes == 10 and source.category_ids == tuple(range(1, 30, 3))
  assert source.class_names == tuple(f"digit {d}" for d in range(10))
  assert source.labels_by_category[28] == 9
  for i, scene in enumerate(scenes):
    record, n = source[i], int(scene["num_objects"])
    assert record["image_id"] == 10 + i
    np.testing.assert_array_equal(record["image"], scene["image"])
    np.testing.assert_array_equal(record["boxes"], scene["boxes"][:n])
    np.testing.assert_array_equal(record["labels"], scene["labels"][:n])
    np.testing.assert_array_equal(record["masks"], scene["instance_masks"][:n])
    np.testing.assert_array_equal(record["crowd"], np.arange(n) == 2)
    assert record["boxes"].dtype == np.float32 and record["labels"].dtype == np.int32


def test_a_polygon_fills_its_pixels(scenes, tmp_path):
  record = coco_format.CocoFormat(*_write(tmp_path, scenes), masks=True)[4]
  assert record["image"].shape == (10, 12, 3) and (record["image"] == 200).all()
  want = np.zeros((10, 12), np.uint8)
  want[2:5, 3:8] = 1
  np.testing.assert_array_equal(record["masks"], want[None])
  np.testing.assert_array_equal(record["boxes"], [[3, 2, 8, 5]])
  np.testing.assert_array_equal(record["labels"], [0])


def test_an_image_without_annotations_has_empty_ground_truth(scenes, tmp_path):
  source = coco_format.CocoFormat(*_write(tmp_path, scenes), masks=True, channels=1)
  record = source[5]
  assert record["image_id"] == 99 and record["boxes"].shape == (0, 4)
  assert record["labels"].shape == (0,) and record["masks"].shape == (0, 128, 128)
  out = detection.DetectionTransform(size=32, max_boxes=4)(record)
  assert not out["valid"].any() and out["masks"].shape == (4, 32, 32)


def test_records_go_through_the_detection_transform(scenes, tmp_path):
  source = coco_format.CocoFormat(*_write(tmp_path, scenes))
  assert "masks" not in source[0]
  transform = detection.DetectionTransform(size=64, max_boxes=5, num_classes=source.num_classes)
  for i, scene in enumerate(scenes):
    out, n = transform(source[i]), int(scene["num_objects"])
    assert out["image"].shape == (64, 64, 3) and out["valid"].sum() == n
    np.testing.assert_array_equal(out["boxes"][:n], scene["boxes"][:n] / 2)


def test_missing_files_raise_file_not_found_naming_them(scenes, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"annotation file .*nothing\.json.* does not exist"):
    coco_format.CocoFormat(str(tmp_path / "nothing.json"), str(tmp_path))
  path, image_dir = _write(tmp_path, scenes)
  (tmp_path / "images" / "scene2.png").unlink()
  with pytest.raises(FileNotFoundError, match=r"image id 12 file_name 'scene2\.png' not found"):
    coco_format.CocoFormat(path, image_dir)
  # Unchecked up front, the record fails when read; the others still read.
  source = coco_format.CocoFormat(path, image_dir, check_images=False)
  assert source[1]["image_id"] == 11
  with pytest.raises(FileNotFoundError, match=r"image id 12 file_name 'scene2\.png'"):
    source[2]


def _broken(edit):
  def apply(data):
    edit(data)
    return data

  return apply


def _annotation(data, annotation_id):
  return next(a for a in data["annotations"] if a["id"] == annotation_id)


@pytest.mark.parametrize(
  "edit, match",
  [
    (lambda d: _annotation(d, 1000).pop("bbox"), r"annotation #0 \(id 1000\) has no 'bbox'"),
    (lambda d: _annotation(d, 1001).update(bbox=[1, 2, 3]), r"id 1001 .*4 finite numbers"),
    (lambda d: _annotation(d, 1001).update(bbox=[1, 2, "3", 4]), r"id 1001 .*4 finite numbers"),
    (lambda d: _annotation(d, 1001).update(bbox=[1, 2, -3, 4]), r"id 1001 .*negative width"),
    (lambda d: _annotation(d, 1001).update(bbox=[1, 2, 3, -4]), r"id 1001 .*negative height"),
    (
      lambda d: _annotation(d, 1001).update(bbox=[1, 2, 0, 4]),
      r"annotation id 1001 \(image id 10\): bbox .* \[1, 2, 0, 4\] has a zero or negative width",
    ),
    (
      lambda d: _annotation(d, 1001).update(bbox=[1, 2, 3, 0.0]),
      r"id 1001 .*\[1, 2, 3, 0\.0\] has a zero or negative height; expected both positive",
    ),
    (
      lambda d: _annotation(d, 1001).update(bbox=[128, 2, 3, 4]),
      r"id 1001 .*\[128, 2, 3, 4\] lies entirely outside the image's 128x128",
    ),
    (
      lambda d: _annotation(d, 7).update(bbox=[-5, 2, 5, 3]),
      r"annotation id 7 \(image id 50\): .*outside the image's 12x10 \(width x height\)",
    ),
    (lambda d: _annotation(d, 1100).update(category_id=2), r"id 1100 .*category_id 2 is not"),
    (lambda d: _annotation(d, 1100).update(image_id=777), r"id 1100 .*image_id 777 is not"),
    (lambda d: _annotation(d, 1100).update(iscrowd=2), r"id 1100 .*iscrowd must be 0 or 1"),
    (lambda d: _annotation(d, 7).pop("segmentation"), r"id 7 .*no 'segmentation'"),
    (lambda d: _annotation(d, 7).update(segmentation=[[1, 2, 3]]), r"id 7 .*3 or more x, y pairs"),
    (lambda d: _annotation(d, 7).update(segmentation={"counts": "0"}), r"id 7 .*segmentation must"),
    (
      lambda d: _annotation(d, 7).update(segmentation={"counts": "0", "size": [5, 5]}),
      r"id 7 .*RLE size \[5, 5\] differs from the image's \[height, width\] \[10, 12\]",
    ),
    (lambda d: d["images"][1].pop("file_name"), r"image #1 has no 'file_name'"),
    (lambda d: d["images"][1].update(width=0), r"image id 11: width and height must be positive"),
    (lambda d: d["images"][1].update(id=10), r"image id 10 \(image #1\) is not a new"),
    (lambda d: d["categories"].append({"id": 1, "name": "x"}), r"category #10: id 1 is not a new"),
    (lambda d: d.pop("categories"), r"has no 'categories' list"),
  ],
)
def test_malformed_entries_raise_value_errors_naming_them(scenes, tmp_path, edit, match):
  data = _broken(edit)(_annotation_json(scenes))
  with pytest.raises(ValueError, match=match):
    coco_format.CocoFormat(*_write(tmp_path, scenes, data), masks=True)


def test_undecodable_files_raise_value_errors_naming_them(scenes, tmp_path):
  path, image_dir = _write(tmp_path, scenes)
  (tmp_path / "bad.json").write_text('{"images": [')
  with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
    coco_format.CocoFormat(str(tmp_path / "bad.json"), image_dir)
  data = _annotation_json(scenes)
  _annotation(data, 7)["segmentation"] = {"counts": "!!garbage", "size": [10, 12]}
  source = coco_format.CocoFormat(*_write(tmp_path, scenes, data), masks=True)
  with pytest.raises(ValueError, match=r"annotation id 7 \(image id 50\): cannot decode"):
    source[4]
  data = _annotation_json(scenes)
  # Larger than the file, not smaller: a box beyond the stated size would fail at once.
  data["images"][0]["width"] = 140
  source = coco_format.CocoFormat(*_write(tmp_path, scenes, data))
  with pytest.raises(ValueError, match=r"image id 10 .* is 128x128 .* file says 140x128"):
    source[0]
