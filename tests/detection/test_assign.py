"""Matching and sampling: hand-checked cases, torchvision Matcher / RPN / RoIHeads parity,
sampler counts, jit + vmap over padded batches, empty ground truth, bad input."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from research.detection import anchors as anchors_lib
from research.detection import assign
from research.ops import boxes as box_ops

# 3 ground truth boxes x 6 anchors; gt 2's best quality, 0.4, ties at anchors 3 and 5.
Q = np.array(
  [
    [0.9, 0.5, 0.2, 0.4, 0.0, 0.05],
    [0.1, 0.75, 0.2, 0.4, 0.0, 0.05],
    [0.0, 0.0, 0.25, 0.4, 0.0, 0.4],
  ],
  np.float32,
)


def _match(q, gt_valid=None, **kw):
  matched, labels = assign.match(q, gt_valid, **{"high": 0.7, "low": 0.3, **kw})
  return np.asarray(matched).tolist(), np.asarray(labels).tolist()


def test_match_hand_checked():
  assert _match(Q) == ([0, 1, 2, 0, 0, 2], [1, 1, 0, -1, 0, -1])
  # Anchor 3 becomes positive for gt 2 but keeps its own best match, gt 0 (first of equals).
  assert _match(Q, allow_low_quality_matches=True) == ([0, 1, 2, 0, 0, 2], [1, 1, 0, 1, 0, 1])
  # Padding gt 2 takes no part.
  valid = np.array([True, True, False])
  assert _match(Q, valid, allow_low_quality_matches=True) == (
    [0, 1, 0, 0, 0, 0],
    [1, 1, 0, -1, 0, 0],
  )
  # Fast R-CNN's background band [0.1, low): lower ones are ignored.
  assert _match(Q, background_low=0.1)[1] == [1, 1, 0, -1, -1, -1]
  # An invalid anchor is ignored and cannot be a ground truth's best.
  anchor_valid = np.array([True, True, True, False, True, True])
  assert _match(Q, allow_low_quality_matches=True, anchor_valid=anchor_valid)[1] == [
    1,
    1,
    0,
    -1,
    0,
    1,
  ]
  # A ground truth that overlaps nothing ties at 0 with every anchor: torchvision makes all positive.
  q = np.array([[0.8, 0.0, 0.1], [0.0, 0.0, 0.0]], np.float32)
  assert _match(q, allow_low_quality_matches=True) == ([0, 0, 0], [1, 1, 1])


def test_match_without_valid_ground_truth_is_all_negative():
  none = np.zeros(3, bool)
  for kw in ({}, {"allow_low_quality_matches": True}, {"background_low": 0.1}):
    assert _match(Q, none, **kw) == ([0] * 6, [0] * 6)
  anchor_valid = np.array([True, False, True, True, True, True])
  assert _match(Q, none, anchor_valid=anchor_valid)[1] == [0, -1, 0, 0, 0, 0]
  assert _match(np.zeros((0, 6), np.float32)) == ([0] * 6, [0] * 6)


@pytest.mark.parametrize(
  "high, low, allow", [(0.7, 0.3, True), (0.5, 0.5, False), (0.6, 0.4, False)]
)
def test_match_equals_torchvision_matcher(high, low, allow):
  torch = pytest.importorskip("torch")
  utils = pytest.importorskip("torchvision.models.detection._utils")
  matcher = utils.Matcher(high, low, allow_low_quality_matches=allow)
  ours = jax.jit(
    functools.partial(assign.match, high=high, low=low, allow_low_quality_matches=allow)
  )
  rng = np.random.default_rng(int(high * 100 + low * 10))
  f32 = np.float32
  # Values exactly at and one ulp around the thresholds, and many ties.
  edges = [f32(t) for t in (high, low)]
  edges += [np.nextafter(t, f32(0)) for t in edges] + [np.nextafter(t, f32(1)) for t in edges]
  for trial in range(40):
    q = (rng.integers(0, 11, (6, 50)) / 10).astype(f32)
    q.flat[rng.integers(0, q.size, 30)] = rng.choice(edges, 30)
    valid = rng.random(6) < (0.7 if trial else 0.0)
    matched, labels = map(np.asarray, ours(q, valid))
    if not valid.any():
      np.testing.assert_array_equal(labels, 0)  # torchvision's background image
      continue
    expected = matcher(torch.from_numpy(q[valid])).numpy()
    np.testing.assert_array_equal(
      labels, np.where(expected >= 0, 1, np.where(expected == -1, 0, -1))
    )
    # Indices into the padded rows: the k-th valid row is row flatnonzero(valid)[k].
    pos = expected >= 0
    np.testing.assert_array_equal(matched[pos], np.flatnonzero(valid)[expected[pos]])


def _gt_batch(rng, counts, max_boxes, size):
  """Padded integer ground truth [B, max_boxes, 4]; padding rows are NaN to show they are unused."""
  boxes = np.full((len(counts), max_boxes, 4), np.nan, np.float32)
  valid = np.zeros((len(counts), max_boxes), bool)
  for b, n in enumerate(counts):
    xy = rng.integers(0, size - 40, (n, 2))
    wh = rng.integers(12, 60, (n, 2))
    boxes[b, :n] = np.concatenate([xy, np.minimum(xy + wh, size)], axis=1)
    valid[b, :n] = True
  return boxes, valid


def test_rpn_targets_equal_torchvision_under_jit_and_vmap():
  torch = pytest.importorskip("torch")
  rpn_lib = pytest.importorskip("torchvision.models.detection.rpn")
  rpn = rpn_lib.RegionProposalNetwork(
    rpn_lib.AnchorGenerator(), rpn_lib.RPNHead(1, 9), 0.7, 0.3, 256, 0.5, {}, {}, 0.7
  )
  anchors = anchors_lib.anchors((8, 8), 16, sizes=(16, 32, 64))
  gt, valid = _gt_batch(np.random.default_rng(0), [3, 6, 0], 6, 128)
  keys = jax.random.split(jax.random.key(0), 3)
  batched = jax.jit(jax.vmap(functools.partial(assign.rpn_targets, anchors)))
  out = batched(gt, valid, keys)
  assert out.labels.shape == (3, 576) and out.sampled.shape == (3, 576)
  assert out.matched_boxes.shape == out.deltas.shape == (3, 576, 4)
  assert (
    np.isfinite(np.asarray(out.deltas)).all() and np.isfinite(np.asarray(out.matched_boxes)).all()
  )
  # Eagerly (with the value checks) one image gives the same targets.
  eager = assign.rpn_targets(anchors, gt[1], valid[1], keys[1])
  for a, b in zip(eager, out):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b)[1], rtol=1e-6, atol=1e-6)
  anchors_t = torch.from_numpy(anchors)
  for b in range(3):
    gt_t = torch.from_numpy(gt[b][valid[b]])
    (labels_t,), (matched_t,) = rpn.assign_targets_to_anchors([anchors_t], [{"boxes": gt_t}])
    labels, sampled = np.asarray(out.labels[b]), np.asarray(out.sampled[b])
    np.testing.assert_array_equal(labels, labels_t.numpy())
    pos = labels == 1
    assert pos.sum() >= valid[b].sum()  # every box's best anchor
    np.testing.assert_array_equal(np.asarray(out.matched_boxes[b])[pos], matched_t.numpy()[pos])
    deltas_t = rpn.box_coder.encode_single(matched_t, anchors_t).numpy()
    np.testing.assert_allclose(np.asarray(out.deltas[b])[pos], deltas_t[pos], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.deltas[b])[~pos], 0)
    (pos_t,), (neg_t,) = rpn.fg_bg_sampler([labels_t])
    assert (sampled & pos).sum() == pos_t.sum() and (sampled & (labels == 0)).sum() == neg_t.sum()
    assert not (sampled & (labels == -1)).any()
  # The image without ground truth: 256 negatives, nothing regressed.
  assert (np.asarray(out.labels[2]) == 0).all() and np.asarray(out.sampled[2]).sum() == 256


def test_rpn_targets_ignore_anchors_outside_the_image():
  anchors = anchors_lib.anchors((4, 4), 16, sizes=(16, 48))
  inside = anchors_lib.inside_image(anchors, (64, 64))
  gt = np.array([[0, 0, 30, 30], [32, 32, 64, 64]], np.float32)
  out = assign.rpn_targets(anchors, gt, None, jax.random.key(1), anchor_valid=inside)
  labels = np.asarray(out.labels)
  np.testing.assert_array_equal(labels[~np.asarray(inside)], -1)
  assert not np.asarray(out.sampled)[~np.asarray(inside)].any()
  # Each box still gets its best inside anchor.
  ious = box_ops.iou_numpy(gt, anchors[np.asarray(inside)])
  best = np.flatnonzero(np.asarray(inside))[ious.argmax(axis=1)]
  np.testing.assert_array_equal(labels[best], 1)


def test_roi_targets_equal_torchvision_under_jit_and_vmap():
  torch = pytest.importorskip("torch")
  roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
  heads = roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 32, 0.25, None, 0.05, 0.5, 100)
  rng = np.random.default_rng(1)
  gt, gt_valid = _gt_batch(rng, [4, 0], 5, 128)
  gt_labels = rng.integers(1, 21, (2, 5)).astype(np.int32)
  # Proposals: jittered ground truth (foreground) and random boxes; the last 8 are padding.
  jitter = np.nan_to_num(gt[0, rng.integers(0, 4, 40)]) + rng.normal(0, 6, (40, 4))
  rand = rng.uniform(0, 100, (40, 2))
  props = np.concatenate([jitter, np.concatenate([rand, rand + rng.uniform(5, 40, (40, 2))], 1)])
  props = np.stack([np.sort(props[:, 0::2], 1), np.sort(props[:, 1::2], 1)], -1)
  props = props.reshape(-1, 4).astype(np.float32)  # (x1, y1, x2, y2) with x1 <= x2, y1 <= y2
  props = np.stack([props, props])
  props_valid = np.arange(80) < 72
  f = functools.partial(assign.roi_targets, num_samples=32, positive_fraction=0.25)
  out = jax.jit(jax.vmap(f))(
    props,
    gt,
    gt_labels,
    gt_valid,
    jax.random.split(jax.random.key(0), 2),
    proposal_valid=np.stack([props_valid] * 2),
  )
  assert out.rois.shape == out.deltas.shape == (2, 32, 4) and out.labels.shape == (2, 32)
  assert np.isfinite(np.asarray(out.deltas)).all()
  # torchvision's candidates: the valid proposals, then the valid ground truth.
  props_t, gt_t = torch.from_numpy(props[0, :72]), torch.from_numpy(gt[0, :4])
  (cands,) = heads.add_gt_proposals([props_t], [gt_t])
  (matched_t,), (labels_t,) = heads.assign_targets_to_proposals(
    [cands], [gt_t], [torch.from_numpy(gt_labels[0, :4])]
  )
  idx, ok = np.asarray(out.indices[0]), np.asarray(out.valid[0])
  tv_idx = np.where(idx < 80, idx, idx - 80 + 72)[ok]  # ours: 80 padded proposals, then gt slots
  assert ((idx[ok] < 72) | ((idx[ok] >= 80) & (idx[ok] < 84))).all()  # no padding sampled
  labels = np.asarray(out.labels[0])
  np.testing.assert_array_equal(labels[ok], labels_t.numpy()[tv_idx])
  np.testing.assert_array_equal(labels[~ok], -1)
  np.testing.assert_array_equal(np.asarray(out.rois[0])[ok], cands.numpy()[tv_idx])
  fg = labels >= 1
  deltas_t = heads.box_coder.encode_single(gt_t[matched_t], cands).numpy()[tv_idx]
  np.testing.assert_allclose(np.asarray(out.deltas[0])[fg], deltas_t[fg[ok]], rtol=1e-5, atol=1e-5)
  (pos_t,), (neg_t,) = heads.fg_bg_sampler([labels_t])
  assert (fg.sum(), (labels == 0).sum()) == (pos_t.sum(), neg_t.sum()) == (8, 24)
  # Foreground first, as `sample` orders them.
  assert fg[:8].all()
  # The image without ground truth: 32 background RoIs from the valid proposals only.
  assert (np.asarray(out.labels[1]) == 0).all() and (np.asarray(out.indices[1]) < 72).all()
  np.testing.assert_array_equal(np.asarray(out.deltas[1]), 0)


def test_roi_targets_fast_rcnn_background_band():
  gt = np.array([[10, 10, 50, 50], [0, 0, 0, 0]], np.float32)
  props = np.array(
    [[12, 12, 50, 50], [30, 30, 70, 70], [10, 10, 90, 90], [60, 60, 99, 99], [0, 0, 20, 20]],
    np.float32,
  )
  ious = box_ops.iou_numpy(gt[:1], props)[0]  # 0.90, 0.14, 0.25, 0, 0.05
  out = assign.roi_targets(
    props,
    gt,
    np.array([7, 0]),
    np.array([True, False]),
    jax.random.key(0),
    num_samples=8,
    positive_fraction=0.25,
    background_low=0.1,
    append_gt=False,
  )
  labels, idx, ok = map(np.asarray, (out.labels, out.indices, out.valid))
  assert sorted(zip(idx[ok].tolist(), labels[ok].tolist())) == [(0, 7), (1, 0), (2, 0)]
  assert (ious[idx[ok & (labels == 0)]] >= 0.1).all()
  # Centres 30 and 31, widths 40 and 38: (10 * -1 / 38, 10 * -1 / 38, 5 log(40 / 38), ...).
  np.testing.assert_allclose(
    np.asarray(out.deltas)[0], [-0.2631579, -0.2631579, 0.2564664, 0.2564664], rtol=1e-6
  )
  np.testing.assert_array_equal(np.asarray(out.deltas)[1:], 0)
  # Without ground truth there is no band: all valid proposals are background.
  empty = assign.roi_targets(
    props,
    gt,
    np.array([7, 0]),
    np.array([False, False]),
    jax.random.key(0),
    num_samples=8,
    background_low=0.1,
    append_gt=False,
  )
  assert np.asarray(empty.valid).sum() == 5 and (np.asarray(empty.labels)[:5] == 0).all()
  # No ground truth slots at all (max_boxes 0) is a static shape too.
  none = assign.rpn_targets(
    props, np.zeros((0, 4), np.float32), None, jax.random.key(0), num_samples=4
  )
  assert (np.asarray(none.labels) == 0).all() and np.asarray(none.sampled).sum() == 4


@pytest.mark.parametrize(
  "num_pos, num_neg, num_samples, fraction",
  [
    (300, 5000, 256, 0.5),  # RPN, plenty of both
    (100, 1000, 512, 0.25),  # RoI head
    # Small cases padded to 64 labels share one compiled program.
    (30, 30, 16, 0.5),
    (3, 40, 16, 0.5),  # few positives: negatives fill up
    (20, 2, 16, 0.5),  # few negatives
    (20, 20, 16, 0.7),  # int(16 * 0.7) = int(11.2) = 11 positives
    (30, 33, 16, 0.33),  # int(5.28) = 5
    (4, 4, 16, 0.0),
    (40, 4, 16, 1.0),
    (0, 0, 16, 0.5),  # nothing to sample
  ],
)
def test_sample_counts_equal_torchvision(num_pos, num_neg, num_samples, fraction):
  rng = np.random.default_rng(num_pos + num_neg)
  num_ignored = max(64, num_pos + num_neg + 1) - num_pos - num_neg
  labels = rng.permutation(np.repeat([1, 0, -1], [num_pos, num_neg, num_ignored])).astype(np.int32)
  labels[labels == 1] = rng.integers(1, 5, num_pos)  # classes count as positive
  indices, valid = map(
    np.asarray,
    assign.sample(labels, jax.random.key(3), num_samples=num_samples, positive_fraction=fraction),
  )
  assert indices.shape == valid.shape == (num_samples,) and indices.dtype == np.int32
  expected_pos = min(num_pos, int(num_samples * fraction))
  expected_neg = min(num_neg, num_samples - expected_pos)
  picked = labels[indices[valid]]
  assert (picked[:expected_pos] >= 1).all() and (picked[expected_pos:] == 0).all()
  assert (
    valid.sum() == expected_pos + expected_neg and not valid[expected_pos + expected_neg :].any()
  )
  assert len(set(indices[valid].tolist())) == valid.sum() and (indices[~valid] == 0).all()
  try:
    import torch
    from torchvision.models.detection import _utils
  except ImportError:
    return
  (pos_t,), (neg_t,) = _utils.BalancedPositiveNegativeSampler(num_samples, fraction)(
    [torch.from_numpy(labels)]
  )
  assert (pos_t.sum(), neg_t.sum()) == (expected_pos, expected_neg)


def test_sample_is_uniform_and_vmaps_over_keys():
  labels = np.array([1] * 10 + [0] * 10 + [-1] * 4, np.int32)
  draw = jax.jit(
    jax.vmap(lambda k: assign.sample(labels, k, num_samples=10, positive_fraction=0.5))
  )
  indices, valid = draw(jax.random.split(jax.random.key(7), 400))
  assert indices.shape == (400, 10) and np.asarray(valid).all()
  counts = np.bincount(np.asarray(indices).ravel(), minlength=24)
  # Each of 10 positives (and negatives) is drawn in 5 of 10 slots: 200 of 400 times each.
  assert (np.abs(counts[:20] - 200) < 40).all() and (counts[20:] == 0).all()


def _bad(fn, **override):
  gt = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32)
  anchors = anchors_lib.anchors((2, 2), 16, sizes=(16,), aspect_ratios=(1.0,))
  args = {
    "anchors": anchors,
    "gt_boxes": gt,
    "gt_valid": np.array([True, True]),
    "key": jax.random.key(0),
  }
  if fn == "roi":
    args = {"proposals": args.pop("anchors"), **args, "gt_labels": np.array([1, 2])}
  kw = {**args, **override}
  return (assign.rpn_targets if fn == "rpn" else assign.roi_targets)(**kw)


@pytest.mark.parametrize(
  "call, message",
  [
    (
      lambda: _bad("rpn", gt_boxes=np.zeros((2, 3))),
      r"rpn_targets: gt_boxes must be \[G, 4\].*got shape \(2, 3\)",
    ),
    (
      lambda: _bad("rpn", anchors=np.zeros((4, 5))),
      r"anchors must be \[A, 4\].*got shape \(4, 5\)",
    ),
    (lambda: _bad("roi", proposals=np.zeros(4)), r"proposals must be \[P, 4\].*got shape \(4,\)"),
    (
      lambda: _bad("rpn", gt_boxes=np.array([[0, 0, 1, np.nan], [0, 0, 1, 1]])),
      r"gt_boxes: expected .*finite.*got \(0.0, 0.0, 1.0, nan\)",
    ),
    (
      lambda: _bad("rpn", gt_boxes=np.array([[0, 0, 1, 1], [5, 0, 4.999, 1]])),
      r"gt_boxes: expected .*x1 <= x2.*at box 1",
    ),
    (
      lambda: _bad("rpn", gt_valid=np.ones(3, bool)),
      r"gt_valid must be \[G\] = \[2\] bool, got shape \(3,\)",
    ),
    (lambda: _bad("rpn", num_samples=0), r"num_samples must be an int > 0, got 0"),
    (lambda: _bad("roi", num_samples=-4), r"num_samples must be an int > 0, got -4"),
    (lambda: _bad("rpn", num_samples=2.5), r"num_samples must be an int > 0, got 2.5"),
    (lambda: _bad("rpn", positive_fraction=1.5), r"positive_fraction must be in \[0, 1\], got 1.5"),
    (
      lambda: _bad("roi", positive_fraction=-0.1),
      r"positive_fraction must be in \[0, 1\], got -0.1",
    ),
    (
      lambda: _bad("rpn", positive_fraction=float("nan")),
      r"positive_fraction must be a real number, got nan",
    ),
    (lambda: _bad("rpn", high=0.3, low=0.7), r"low must be <= high, got low=0.7 > high=0.3"),
    (
      lambda: _bad("roi", background_low=0.6),
      r"background_low must be <= low=0.5, got background_low=0.6",
    ),
    (
      lambda: _bad("roi", gt_labels=np.array([1, 0])),
      r"gt_labels of valid boxes must be classes >= 1",
    ),
    (
      lambda: _bad("roi", gt_labels=np.array([1.0, 2.0])),
      r"gt_labels must be \[G\] = \[2\] int.*float",
    ),
    (
      lambda: assign.match(np.zeros(5), high=0.7, low=0.3),
      r"quality must be \[G, A\].*got shape \(5,\)",
    ),
    (lambda: assign.match(np.full((1, 2), np.nan), high=0.7, low=0.3), r"quality must not be NaN"),
    (
      lambda: assign.sample(
        np.zeros((2, 2)), jax.random.key(0), num_samples=4, positive_fraction=0.5
      ),
      r"labels must be \[N\].*\(2, 2\)",
    ),
    (
      lambda: assign.sample(
        np.zeros(4), jax.random.key(0), num_samples=True, positive_fraction=0.5
      ),
      r"num_samples must be an int > 0, got True",
    ),
  ],
)
def test_bad_input_names_argument_expected_and_received(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_padding_rows_may_hold_anything():
  valid = np.array([True, False])
  garbage = _bad("rpn", gt_boxes=np.array([[0, 0, 10, 10], [np.nan, 5, -3, 0]]), gt_valid=valid)
  zeros = _bad("rpn", gt_boxes=np.array([[0, 0, 10, 10], [0, 0, 0, 0]]), gt_valid=valid)
  for a, b in zip(garbage, zeros):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.isfinite(np.asarray(garbage.matched_boxes)).all()
  np.testing.assert_array_equal(garbage.labels, [1, 0, 0, 0])  # the box's best anchor
