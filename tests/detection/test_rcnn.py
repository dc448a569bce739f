"""R-CNN's pieces: the context warp, window labels, SVMs with hard negatives, box regression,
detection with per-class NMS."""

import numpy as np
import pytest

from research.detection import rcnn


def test_dilate_leaves_the_box_context_pixels_from_each_side_at_the_warped_size():
  big = rcnn.dilate([[10, 20, 205, 215]])  # 195 x 195: warped to 227, 16 pixels each side
  np.testing.assert_allclose(big, [[-6, 4, 221, 231]])
  np.testing.assert_allclose(rcnn.dilate([[0, 0, 4, 2]], context=0), [[0, 0, 4, 2]])
  with pytest.raises(ValueError, match="context must be in"):
    rcnn.dilate([[0, 0, 4, 2]], context=120)


def test_warp_without_context_samples_the_box_bilinearly():
  torch = pytest.importorskip("torch")
  import torchvision  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (30, 40, 2)).astype(np.float32)
  boxes = np.array([[3.0, 4.0, 23.0, 18.0], [10.5, 0.0, 39.0, 29.5]], np.float32)
  got = rcnn.warp(image, boxes, 7, context=0)
  # RoI Align with one sample per bin at its centre is the same bilinear warp (aligned:
  # pixel centres at +0.5, as here), inside the image.
  rois = torch.tensor(np.concatenate([np.zeros((2, 1)), boxes], 1), dtype=torch.float32)
  want = torchvision.ops.roi_align(
    torch.tensor(image).permute(2, 0, 1)[None], rois, 7, 1.0, 1, aligned=True
  ).permute(0, 2, 3, 1)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-3)


def test_warp_fills_outside_the_image_and_keeps_a_constant_image_constant():
  image = np.full((20, 20, 3), 100, np.uint8)
  out = rcnn.warp(image, [[0, 0, 20, 20], [5, 5, 8, 9]], 16, fill=(1, 2, 3))
  # Dilated, the whole-image box reaches outside: its border samples are the fill.
  np.testing.assert_array_equal(out[0, 0, 0], [1, 2, 3])
  np.testing.assert_allclose(out[0, 8, 8], 100)
  np.testing.assert_allclose(out[1], 100, atol=1e-3)  # all inside: the image's value
  with pytest.raises(ValueError, match="x2 > x1"):
    rcnn.warp(image, [[5, 5, 5, 9]], 16)
  with pytest.raises(ValueError, match="size must be a positive int"):
    rcnn.warp(image, [[0, 0, 5, 5]], 0)
  with pytest.raises(ValueError, match=r"image must be \[H, W, C\]"):
    rcnn.warp(np.zeros((0, 4, 3)), [[0, 0, 5, 5]], 4)
  tiny = rcnn.warp(np.full((1, 1, 1), 50, np.uint8), [[0, 0, 1, 1]], 4, context=0)
  np.testing.assert_allclose(tiny, 50)


def test_window_labels_and_fine_tuning_windows_keep_a_quarter_foreground():
  labels, iou = rcnn.window_labels(
    [[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60], [40, 40, 60, 60]],
    np.array([[0, 0, 10, 10], [40, 40, 60, 60]], np.float32),
    np.array([3, 0]),
  )
  np.testing.assert_array_equal(labels, [4, 4, 0, 1])
  np.testing.assert_allclose(iou, [1, 10 / 12, 0.25, 1])
  empty, _ = rcnn.window_labels([[0, 0, 4, 4]], np.zeros((0, 4)), np.zeros(0, int))
  np.testing.assert_array_equal(empty, [0])

  rng = np.random.default_rng(0)
  records = []
  for _ in range(3):
    proposals = rng.uniform(0, 30, (40, 2))
    proposals = np.concatenate([proposals, proposals + rng.uniform(4, 30, (40, 2))], 1)
    records.append(
      {
        "image": np.zeros((64, 64, 1), np.uint8),
        "boxes": np.array([[5, 5, 25, 25]], np.float32),
        "labels": np.array([2]),
        "proposals": proposals.astype(np.float32),
      }
    )
  windows = rcnn.fine_tuning_windows(records, progress=False)
  fg = (windows.label > 0).sum()
  assert fg >= 3 and set(windows.label[windows.label > 0]) == {3}
  assert (windows.label == 0).sum() == min(round(fg * 3), 3 * 40 - (fg - 3))
  with pytest.raises(ValueError, match="records need 'proposals'"):
    rcnn.fine_tuning_windows(
      [{k: v for k, v in records[0].items() if k != "proposals"}], progress=False
    )


def test_region_records_are_warped_uint8_windows():
  image = np.zeros((64, 64, 1), np.uint8)
  image[10:30, 10:30] = 200
  records = [
    {
      "image": image,
      "boxes": np.array([[10, 10, 30, 30]], np.float32),
      "labels": np.array([1]),
      "proposals": np.array([[40, 40, 60, 60]], np.float32),
    }
  ]
  regions = rcnn.RegionRecords(records, 16, progress=False)
  assert len(regions) == 2
  by_label = {regions[k]["label"]: regions[k]["image"] for k in range(2)}
  assert by_label[2].shape == (16, 16, 1) and by_label[2].dtype == np.uint8
  assert by_label[2][8, 8, 0] == 200 and by_label[0].max() == 0


def test_box_targets_invert_and_regression_learns_a_shift():
  rng = np.random.default_rng(1)
  proposals = np.concatenate([rng.uniform(0, 50, (30, 2)), rng.uniform(60, 100, (30, 2))], 1)
  gt = proposals + rng.normal(0, 3, (30, 4))
  np.testing.assert_allclose(
    rcnn.apply_box_deltas(proposals, rcnn.box_targets(proposals, gt)), gt, atol=1e-9
  )
  # Features that carry the targets linearly: the ridge fit recovers them closely.
  targets = rcnn.box_targets(proposals, gt)
  features = np.concatenate([targets * 100, rng.normal(size=(30, 3))], 1)
  regressor = rcnn.BoxRegressor.fit(
    [features, np.zeros((0, 7))], [targets, np.zeros((0, 4))], 7, alpha=1.0
  )
  np.testing.assert_allclose(regressor(features, np.zeros(30, int)), targets, atol=1e-2)
  np.testing.assert_array_equal(regressor(features, np.ones(30, int)), 0)  # no examples


def test_svms_with_hard_negative_mining_separate_classes():
  rng = np.random.default_rng(2)
  centres = np.array([[3.0, 0, 0], [0, 3.0, 0]])
  positives = [c + rng.normal(0, 0.5, (20, 3)) for c in centres]
  negatives = [rng.normal(0, 0.5, (400, 3)) + np.array([0, 0, 3.0]) for _ in centres]
  negatives[0] = np.concatenate([negatives[0], positives[1]])  # class 1 is class 0's negative
  svms = rcnn.train_svms(positives, negatives, c=1.0, start=50)
  scores = svms(np.concatenate(positives))
  assert (scores[:20, 0] > 0).mean() > 0.9 and (scores[:20, 0] > scores[:20, 1]).all()
  assert (scores[20:, 1] > scores[20:, 0]).all()
  assert (svms(negatives[1][:400]) < 0).mean() > 0.95


def test_classifiers_save_and_load_the_svms_regressors_and_scales(tmp_path):
  rng = np.random.default_rng(3)
  saved = rcnn.Classifiers(
    rcnn.SVMs(rng.normal(size=(6, 2)), rng.normal(size=2)),
    rcnn.BoxRegressor(rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 4))),
    fc7_scale=0.25,
    pool5_scale=3.5,
  )
  path = saved.save(str(tmp_path / rcnn.CLASSIFIERS_FILE))
  loaded = rcnn.Classifiers.load(path)
  x, f = rng.normal(size=(7, 6)), rng.normal(size=(7, 5))
  np.testing.assert_array_equal(loaded.svms(x), saved.svms(x))
  labels = rng.integers(0, 2, 7)
  np.testing.assert_array_equal(loaded.regressor(f, labels), saved.regressor(f, labels))
  assert (loaded.fc7_scale, loaded.pool5_scale) == (0.25, 3.5)
  with pytest.raises(FileNotFoundError, match="rcnn_detection evaluator writes"):
    rcnn.Classifiers.load(str(tmp_path / "missing.npz"))


def test_detect_regresses_clips_and_suppresses_per_class():
  proposals = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 70, 70], [0, 0, 10, 10]], float)
  scores = np.array([[2.0, -5], [1.0, -5], [-5, 0.5], [-5, 0.2]])
  out = rcnn.detect(proposals, scores, image_hw=(60, 60), nms_thresh=0.3)
  # The second box overlaps the first of its class; the same box of another class stays.
  np.testing.assert_array_equal(out["labels"], [0, 1, 1])
  np.testing.assert_allclose(out["boxes"], [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
  shift = lambda index, labels: np.tile([0.1, 0, 0, 0], (len(index), 1))  # noqa: E731
  moved = rcnn.detect(proposals, scores, shift, image_hw=(60, 60), score_thresh=1.5)
  np.testing.assert_allclose(moved["boxes"], [[1, 0, 11, 10]])
  none = rcnn.detect(proposals, scores, image_hw=(60, 60), score_thresh=5)
  assert none["boxes"].shape == (0, 4)


def test_an_image_without_proposals_has_no_detections():
  import jax  # pylint: disable=import-outside-toplevel

  from research.models import resnet  # pylint: disable=import-outside-toplevel
  from research.train.tasks import rcnn as rcnn_task  # pylint: disable=import-outside-toplevel

  model = resnet.ResNet18(num_classes=3, num_filters=4)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
  features = rcnn_task.WindowFeatures(
    model, variables, lambda b: {"image": b["image"].astype(np.float32)}, 16, (0,), batch=4
  )
  fc7, pool5 = features(np.zeros((20, 20, 3), np.uint8), np.zeros((0, 4)))
  assert fc7.shape[0] == 0 and pool5.shape[0] == 0
  d = fc7.shape[1]
  classifiers = rcnn.Classifiers(
    rcnn.SVMs(np.zeros((d, 2)), np.zeros(2)),
    rcnn.BoxRegressor(np.zeros((2, pool5.shape[1], 4)), np.zeros((2, 4))),
    1.0,
    1.0,
  )
  record = {"image": np.zeros((20, 20, 3), np.uint8), "proposals": np.zeros((0, 4), np.float32)}
  found, _, _ = rcnn_task.detect_image(features, classifiers, record)
  assert found["boxes"].shape == (0, 4) and len(found["labels"]) == 0
