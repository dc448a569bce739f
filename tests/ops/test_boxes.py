"""Boxes against torchvision.ops (IoU, BoxCoder, nms, batched_nms) and their static-shape contract."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import boxes

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]


def _random_boxes(rng, n, *, image=200.0, clusters=None):
  """[n, 4] float32 boxes; with `clusters`, jittered copies of a few boxes (long suppression chains)."""
  if clusters:
    centers = rng.uniform(20, image - 20, (clusters, 2))[rng.integers(0, clusters, n)]
    xy = centers + rng.normal(0, 4, (n, 2))
    wh = rng.uniform(10, 30, (n, 2))
  else:
    xy = rng.uniform(0, image, (n, 2))
    wh = rng.uniform(1, image / 4, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _scores(rng, n):
  return (rng.permutation(n) / max(n, 1)).astype(np.float32)  # distinct


def _kept(result):
  indices, valid = jax.device_get(result)
  assert indices.shape == valid.shape and indices.dtype == np.int32 and valid.dtype == bool
  # Valid entries first, padding after, padded with index 0.
  k = int(valid.sum())
  assert valid[:k].all() and not valid[k:].any() and (indices[k:] == 0).all()
  return indices[:k]


def _torch(*arrays):
  import torch  # pylint: disable=import-outside-toplevel

  return [torch.from_numpy(np.asarray(a)) for a in arrays]


def test_format_conversions_match_torchvision():
  tv = pytest.importorskip("torchvision")
  b = _random_boxes(np.random.default_rng(0), 50)
  (tb,) = _torch(b)
  cxcywh = boxes.xyxy_to_cxcywh(b)
  np.testing.assert_allclose(cxcywh, tv.ops.box_convert(tb, "xyxy", "cxcywh"), atol=1e-5, rtol=0)
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(cxcywh), b, atol=1e-4, rtol=0)
  np.testing.assert_allclose(boxes.area(b), tv.ops.box_area(tb), rtol=1e-6)
  # Any leading axes, and no boxes at all.
  assert boxes.xyxy_to_cxcywh(b.reshape(5, 10, 4)).shape == (5, 10, 4)
  assert boxes.cxcywh_to_xyxy(np.zeros((0, 4))).shape == (0, 4)


def test_iou_matches_torchvision():
  tv = pytest.importorskip("torchvision")
  rng = np.random.default_rng(1)
  both = _random_boxes(rng, 70, clusters=3)
  a, b = both[:40], both[40:]
  expected = tv.ops.box_iou(*_torch(a, b)).numpy()
  assert (expected > 0.5).any()  # the clusters make real overlaps
  np.testing.assert_allclose(boxes.iou(a, b), expected, atol=1e-6, rtol=0)
  np.testing.assert_allclose(boxes.iou_numpy(a, b), expected, atol=1e-6, rtol=0)
  assert boxes.iou(a[:0], b).shape == (0, 30) and boxes.iou_numpy(a[:0], b[:0]).shape == (0, 0)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_encode_decode_match_box_coder(weights):
  pytest.importorskip("torchvision")
  from torchvision.models.detection._utils import BoxCoder  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(2)
  anchors = _random_boxes(rng, 64)
  targets = _random_boxes(rng, 64)
  coder = BoxCoder(weights)
  ta, tt = _torch(anchors, targets)
  deltas = boxes.encode(targets, anchors, weights)
  np.testing.assert_allclose(deltas, coder.encode_single(tt, ta), atol=1e-5, rtol=1e-5)
  # Class-specific deltas [N, K, 4] against anchors [N, 1, 4], as a box head predicts them,
  # with some past the clamp at log(1000 / 16).
  codes = rng.normal(0, 2, (64, 3, 4)).astype(np.float32)
  codes[:5, :, 2:] = 20.0 * max(weights)
  decoded = boxes.decode(codes, anchors[:, None], weights)
  expected = coder.decode_single(*_torch(codes.reshape(64, 12), anchors)).reshape(64, 3, 4)
  np.testing.assert_allclose(decoded, expected, atol=1e-5, rtol=1e-5)
  widths = (decoded[:5, :, 2] - decoded[:5, :, 0]) / (anchors[:5, None, 2] - anchors[:5, None, 0])
  np.testing.assert_allclose(widths, 1000 / 16, rtol=1e-5)
  np.testing.assert_allclose(boxes.decode(deltas, anchors, weights), targets, atol=1e-4, rtol=1e-5)
  assert boxes.decode(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)


def test_clip_and_remove_small_boxes_match_torchvision():
  tv = pytest.importorskip("torchvision")
  b = _random_boxes(np.random.default_rng(3), 60, image=120.0) - 10.0
  (tb,) = _torch(b)
  np.testing.assert_array_equal(boxes.clip(b, (90, 100)), tv.ops.clip_boxes_to_image(tb, (90, 100)))
  # The size may be traced: one compiled function for every image size.
  clip_jit = jax.jit(boxes.clip)
  np.testing.assert_array_equal(clip_jit(b, jnp.array([90, 100])), boxes.clip(b, (90, 100)))
  mask = boxes.remove_small_boxes(b, 15.0)
  assert mask.shape == (60,) and mask.dtype == bool
  np.testing.assert_array_equal(np.flatnonzero(mask), tv.ops.remove_small_boxes(tb, 15.0))
  assert boxes.remove_small_boxes(np.zeros((0, 4)), 1.0).shape == (0,)


@pytest.mark.parametrize("n,clusters", [(1, None), (7, 2), (100, 5), (1000, 30)])
def test_nms_matches_torchvision(n, clusters):
  tv = pytest.importorskip("torchvision")
  rng = np.random.default_rng(n)
  b, s = _random_boxes(rng, n, clusters=clusters), _scores(rng, n)
  for threshold in THRESHOLDS:
    expected = tv.ops.nms(*_torch(b, s), threshold).numpy()
    np.testing.assert_array_equal(_kept(boxes.nms(b, s, threshold, max_output=n)), expected)
    np.testing.assert_array_equal(boxes.nms_numpy(b, s, threshold), expected)


def test_nms_padding_truncation_and_valid_mask():
  tv = pytest.importorskip("torchvision")
  rng = np.random.default_rng(4)
  b, s = _random_boxes(rng, 600, clusters=20), _scores(rng, 600)
  expected = tv.ops.nms(*_torch(b, s), 0.5).numpy()
  assert 40 < len(expected) < 560
  # Fewer slots than kept boxes: the best ones; more: padding.
  np.testing.assert_array_equal(_kept(boxes.nms(b, s, 0.5, max_output=40)), expected[:40])
  np.testing.assert_array_equal(_kept(boxes.nms(b, s, 0.5, max_output=700)), expected)
  # Padding rows (valid False) neither survive nor suppress: NMS of the valid rows alone.
  valid = rng.random(600) < 0.7
  got = _kept(boxes.nms(b, s, 0.5, max_output=700, valid=valid))
  sub = np.flatnonzero(valid)
  np.testing.assert_array_equal(got, sub[tv.ops.nms(*_torch(b[sub], s[sub]), 0.5).numpy()])


def test_nms_all_suppressed_and_empty():
  b = np.tile(np.array([[10.0, 10.0, 50.0, 40.0]], np.float32), (9, 1))
  s = np.linspace(0.1, 0.9, 9).astype(np.float32)
  for threshold in (0.0, 0.5, 0.99):
    np.testing.assert_array_equal(_kept(boxes.nms(b, s, threshold, max_output=9)), [8])
    np.testing.assert_array_equal(boxes.nms_numpy(b, s, threshold), [8])
  # IoU is never > 1: nothing is suppressed.
  np.testing.assert_array_equal(_kept(boxes.nms(b, s, 1.0, max_output=9)), np.arange(9)[::-1])
  for k in (0, 5):
    idx, ok = boxes.nms(np.zeros((0, 4)), np.zeros((0,)), 0.5, max_output=k)
    assert idx.shape == ok.shape == (k,) and not ok.any()
    idx, ok = boxes.batched_nms(
      np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), int), 0.5, max_output=k
    )
    assert idx.shape == ok.shape == (k,) and not ok.any()
  assert boxes.nms_numpy(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)
  assert boxes.batched_nms_numpy(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,)), 0.5).shape == (
    0,
  )


def test_nms_chain_of_overlaps():
  # Each box overlaps only its neighbours (IoU 3/7), by decreasing score: greedy NMS
  # keeps every other one, a chain that crosses tile boundaries.
  x = np.arange(600, dtype=np.float32) * 4
  b = np.stack([x, np.zeros_like(x), x + 10, np.full_like(x, 10)], axis=1)
  s = np.linspace(1, 0, 600).astype(np.float32)
  np.testing.assert_array_equal(_kept(boxes.nms(b, s, 0.4, max_output=700)), np.arange(0, 600, 2))
  np.testing.assert_array_equal(boxes.nms_numpy(b, s, 0.4), np.arange(0, 600, 2))


def test_threshold_compared_as_torchvision_does():
  tv = pytest.importorskip("torchvision")
  # IoU = 3 / 10, whose float32 is just above 0.3: torchvision compares it with
  # the threshold as a double and suppresses; a float32 threshold would not.
  b = np.array([[0, 0, 6, 1], [3, 0, 10, 1]], np.float32)
  s = np.array([0.9, 0.8], np.float32)
  expected = tv.ops.nms(*_torch(b, s), 0.3).numpy()
  np.testing.assert_array_equal(expected, [0])
  np.testing.assert_array_equal(_kept(boxes.nms(b, s, 0.3, max_output=2)), expected)
  np.testing.assert_array_equal(boxes.nms_numpy(b, s, 0.3), expected)


def test_nms_under_jit_and_vmap():
  rng = np.random.default_rng(5)
  b = np.stack([_random_boxes(rng, 100, clusters=5) for _ in range(3)])
  s = np.stack([_scores(rng, 100) for _ in range(3)])
  fn = jax.jit(jax.vmap(lambda b, s: boxes.nms(b, s, 0.5, max_output=100)))
  indices, valid = fn(b, s)
  for i in range(3):
    np.testing.assert_array_equal(indices[i][valid[i]], boxes.nms_numpy(b[i], s[i], 0.5))


@pytest.mark.parametrize("n,num_classes", [(7, 2), (300, 4)])
def test_batched_nms_matches_torchvision(n, num_classes):
  tv = pytest.importorskip("torchvision")
  rng = np.random.default_rng(n)
  b, s = _random_boxes(rng, n, clusters=3), _scores(rng, n)
  c = rng.integers(0, num_classes, n)
  for threshold in THRESHOLDS:
    expected = tv.ops.batched_nms(*_torch(b, s, c), threshold).numpy()
    got = _kept(boxes.batched_nms(b, s, c, threshold, max_output=n))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(boxes.batched_nms_numpy(b, s, c, threshold), expected)
  expected = tv.ops.batched_nms(*_torch(b, s, c), 0.5).numpy()
  np.testing.assert_array_equal(_kept(boxes.batched_nms(b, s, c, 0.5, max_output=3)), expected[:3])


def test_batched_nms_many_boxes_matches_torchvision():
  tv = pytest.importorskip("torchvision")
  # Over 1,000 boxes torchvision runs one nms per class instead of the coordinate
  # trick; on a 1/8 grid the shifted coordinates are exact and both agree bitwise.
  rng = np.random.default_rng(6)
  b = np.round(_random_boxes(rng, 2000, image=400.0, clusters=60) * 8) / 8
  s, c = _scores(rng, 2000), rng.integers(0, 20, 2000)
  expected = tv.ops.batched_nms(*_torch(b, s, c), 0.5).numpy()
  np.testing.assert_array_equal(_kept(boxes.batched_nms(b, s, c, 0.5, max_output=2000)), expected)
  np.testing.assert_array_equal(boxes.batched_nms_numpy(b, s, c, 0.5), expected)


def test_batched_nms_suppresses_within_class_only():
  # Two identical boxes of different classes both survive, also at negative
  # coordinates (where the bare coordinate trick would let classes overlap).
  b = np.array([[-50, -50, -10, -10], [-50, -50, -10, -10], [-49, -50, -10, -10]], np.float32)
  s = np.array([0.9, 0.8, 0.7], np.float32)
  c = np.array([0, 1, 1])
  np.testing.assert_array_equal(_kept(boxes.batched_nms(b, s, c, 0.5, max_output=3)), [0, 1])
  np.testing.assert_array_equal(boxes.batched_nms_numpy(b, s, c, 0.5), [0, 1])


@pytest.mark.parametrize(
  "bad,match",
  [
    (np.array([[0.0, 0.0, 1.0, 1.0, 1.0]]), r"4\].*got shape \(1, 5\)"),
    (np.array([[5.0, 0.0, 1.0, 1.0]]), r"x1 <= x2 and y1 <= y2, got \(5.0, 0.0, 1.0, 1.0\)"),
    (np.array([[0.0, math.nan, 1.0, 1.0]]), r"finite coordinates, got \(0.0, nan, 1.0, 1.0\)"),
  ],
)
def test_bad_boxes_raise(bad, match):
  s = np.ones((len(bad),), np.float32)
  for call in (
    lambda: boxes.check_boxes(bad, "gt_boxes"),
    lambda: boxes.iou(bad, bad),
    lambda: boxes.encode(bad, bad),
    lambda: boxes.decode(np.zeros((len(bad), 4)), bad),
    lambda: boxes.clip(bad, (10, 10)),
    lambda: boxes.nms(bad, s, 0.5, max_output=1),
    lambda: boxes.batched_nms(bad, s, np.zeros(len(bad), int), 0.5, max_output=1),
    lambda: boxes.nms_numpy(bad, s, 0.5),
  ):
    with pytest.raises(ValueError, match=match):
      call()
  with pytest.raises(ValueError, match="gt_boxes"):
    boxes.check_boxes(bad, "gt_boxes")


def test_bad_arguments_raise():
  b, s = _random_boxes(np.random.default_rng(7), 4), np.ones((4,), np.float32)
  with pytest.raises(ValueError, match=r"scores must be \[N\] = \[4\].*got \(3,\)"):
    boxes.nms(b, s[:3], 0.5, max_output=4)
  with pytest.raises(ValueError, match="max_output must be an int >= 0, got -1"):
    boxes.nms(b, s, 0.5, max_output=-1)
  with pytest.raises(ValueError, match="iou_threshold must be a real number"):
    boxes.nms(b, s, math.nan, max_output=4)
  with pytest.raises(ValueError, match=r"classes must be \[N\] = \[4\] int"):
    boxes.batched_nms(b, s, np.zeros(4), 0.5, max_output=4)
  with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
    boxes.encode(b, b, (1.0, 1.0, 0.0, 1.0))
  with pytest.raises(ValueError, match=r"cxcywh boxes with w >= 0 and h >= 0"):
    boxes.cxcywh_to_xyxy(np.array([[5.0, 5.0, -1.0, 2.0]]))
  # Under jit the shapes are still checked; the values are check_boxes' job.
  with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
    jax.jit(lambda b: boxes.nms(b, jnp.ones(4), 0.5, max_output=2))(jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="call check_boxes outside jax.jit"):
    jax.jit(lambda b: boxes.check_boxes(b, "boxes"))(b)
  flipped = b[:, [2, 3, 0, 1]]  # traced: no error here, so check at the boundary
  jax.jit(lambda b: boxes.iou(b, b))(flipped)
  with pytest.raises(ValueError):
    boxes.check_boxes(flipped, "boxes")
