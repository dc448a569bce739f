"""Matching anchors or proposals to ground truth, and balanced sampling, with static shapes.

Faster R-CNN's RPN labels an anchor positive at IoU >= 0.7 with some ground
truth box, or when it is a box's best anchor; negative below 0.3; the rest are
ignored. It then trains on 256 anchors per image, at most half positive. The
RoI head (Fast R-CNN) takes proposals at IoU >= 0.5 as foreground, 512 per
image with at most 25% foreground (Fast R-CNN: 64 with background IoU in
[0.1, 0.5)).

`match` is torchvision's `Matcher` (`_utils.py`), ties included; `sample` draws
the same positive and negative counts as its `BalancedPositiveNegativeSampler`,
with the fixed-shape scheme of scenic (`iou_assignment.py`): `top_k` over a random
permutation instead of a variable-length `randperm`. Ground truth comes padded to
`[G, 4]` with a `[G]` validity mask, so everything runs under `jit` and `vmap`
over a batch. An image without valid ground truth is all negative, as
torchvision treats a background image.

Labels: 1 positive (RoI head: the class, >= 1), 0 negative (background), -1 ignored.
Values (NaN, x2 < x1) are checked when the arrays are concrete; under `jit` check
them where data enters (`research.ops.boxes.check_boxes`).
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops import boxes as box_ops

__all__ = ["match", "sample", "rpn_targets", "roi_targets", "RPNTargets", "RoITargets"]


def _concrete(*xs) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _real(x, name: str, fn: str) -> float:
  if not isinstance(x, numbers.Real) or isinstance(x, bool) or np.isnan(x):
    raise ValueError(f"{fn}: {name} must be a real number, got {x!r}")
  return float(x)


def _check_mask(x, n: int, name: str, what: str, fn: str) -> None:
  """x: [n] bool-like, or None for all True."""
  if x is not None and np.shape(x) != (n,):
    raise ValueError(f"{fn}: {name} must be [{what}] = [{n}] bool, got shape {np.shape(x)}")


def _host_mask(x, n: int) -> np.ndarray:
  return np.ones((n,), bool) if x is None else np.asarray(x).astype(bool)


def _ones_if_none(x, n: int) -> jax.Array:
  return jnp.ones((n,), bool) if x is None else jnp.asarray(x).astype(bool)


def _num_boxes(x, name: str, what: str, fn: str) -> int:
  """x: [N, 4] -> N, else a ValueError naming x."""
  shape = np.shape(x)
  if len(shape) != 2 or shape[1] != 4:
    raise ValueError(f"{fn}: {name} must be [{what}, 4] (x1, y1, x2, y2), got shape {shape}")
  return shape[0]


def _check_boxes(x, name: str, what: str, fn: str, valid=None) -> None:
  """Shape check of x: [N, 4], and a value check of its rows in use when concrete."""
  n = _num_boxes(x, name, what, fn)
  if _concrete(x, valid):
    # Padding rows may hold anything; only the boxes in use must be boxes.
    rows = np.where(_host_mask(valid, n)[:, None], np.asarray(x), 0)
    box_ops.check_boxes(rows, f"{fn}: {name}")


def _float_boxes(x, valid) -> jax.Array:
  """[N, 4] as float with the invalid rows zeroed (traced code)."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.where(valid[:, None], x, 0)


def _sample_args(num_samples, positive_fraction, fn: str) -> tuple[int, int]:
  """-> (num_samples, the most positives: torchvision's int(num_samples * positive_fraction))."""
  if (
    not isinstance(num_samples, numbers.Integral)
    or isinstance(num_samples, bool)
    or num_samples <= 0
  ):
    raise ValueError(f"{fn}: num_samples must be an int > 0, got {num_samples!r}")
  fraction = _real(positive_fraction, "positive_fraction", fn)
  if not 0 <= fraction <= 1:
    raise ValueError(f"{fn}: positive_fraction must be in [0, 1], got {positive_fraction!r}")
  return int(num_samples), int(num_samples * fraction)


def _thresholds(high, low, background_low, fn: str):
  high, low = _real(high, "high", fn), _real(low, "low", fn)
  if low > high:
    raise ValueError(f"{fn}: low must be <= high, got low={low!r} > high={high!r}")
  if background_low is not None:
    background_low = _real(background_low, "background_low", fn)
    if background_low > low:
      raise ValueError(
        f"{fn}: background_low must be <= low={low!r}, got background_low={background_low!r}"
      )
  return high, low, background_low


# The array work of each public function is one compiled program: called eagerly,
# op-by-op dispatch would compile dozens of small ones per shape. Under an outer
# jit or vmap it is inlined.
@functools.partial(jax.jit, static_argnames=("high", "low", "allow", "background_low"))
def _match(q, gt_valid, anchor_valid, *, high, low, allow, background_low):
  """q: [G, A] float, G, A > 0; gt_valid: [G], anchor_valid: [A] bool -> ([A], [A]) int32."""
  q = jnp.where(gt_valid[:, None] & anchor_valid[None, :], q, -jnp.inf)
  best = q.max(axis=0)
  matched = q.argmax(axis=0).astype(jnp.int32)  # first of equals, as torch.max
  # Thresholds rounded to the quality's dtype, as torch compares a tensor with a Python float.
  t = lambda v: np.asarray(v, q.dtype)
  labels = jnp.where(best >= t(high), 1, jnp.where(best < t(low), 0, -1))
  if background_low is not None:
    labels = jnp.where(best < t(background_low), -1, labels)
  if allow:
    best_per_gt = q.max(axis=1, keepdims=True)
    ties = (q == best_per_gt) & gt_valid[:, None]
    labels = jnp.where(ties.any(axis=0), 1, labels)
  labels = jnp.where(gt_valid.any(), labels, 0)
  return matched, jnp.where(anchor_valid, labels, -1).astype(jnp.int32)


def match(
  quality,
  gt_valid=None,
  *,
  high,
  low,
  allow_low_quality_matches=False,
  background_low=None,
  anchor_valid=None,
):
  """Assigns each anchor its best ground truth and a label: torchvision's `Matcher`.

  quality: [G, A] float, e.g. `iou(gt_boxes, anchors)`; gt_valid: [G] bool or None
  (all valid); anchor_valid: [A] bool or None, False for anchors (padding
  proposals, anchors across the image border) that take no part: label -1, and
  they are never a ground truth's best anchor.
  An anchor whose best quality is >= high is positive (1), < low negative (0),
  in between ignored (-1). background_low: when given, negatives need quality
  >= background_low and those below are ignored (Fast R-CNN: [0.1, 0.5)).
  allow_low_quality_matches: also every anchor that ties for a ground truth's
  highest quality is positive (the RPN's rule), even when that quality is 0,
  and it keeps its own best ground truth, exactly as torchvision.
  Without valid ground truth every (valid) anchor is negative.
  Returns (matched [A] int32, the best valid ground truth of each anchor, 0 when
  there is none; labels [A] int32 in {1, 0, -1}).
  """
  fn = "match"
  high, low, background_low = _thresholds(high, low, background_low, fn)
  shape = np.shape(quality)
  if len(shape) != 2:
    raise ValueError(f"{fn}: quality must be [G, A] (ground truth x anchors), got shape {shape}")
  g, a = shape
  _check_mask(gt_valid, g, "gt_valid", "G", fn)
  _check_mask(anchor_valid, a, "anchor_valid", "A", fn)
  if _concrete(quality, gt_valid, anchor_valid):
    used = _host_mask(gt_valid, g)[:, None] & _host_mask(anchor_valid, a)[None, :]
    if np.isnan(np.asarray(quality, np.float64)[used]).any():
      raise ValueError(f"{fn}: quality must not be NaN where ground truth and anchor are valid")
  if g == 0 or a == 0:
    labels = jnp.where(_ones_if_none(anchor_valid, a), 0, -1).astype(jnp.int32)
    return jnp.zeros((a,), jnp.int32), labels
  q = jnp.asarray(quality)
  q = q.astype(jnp.promote_types(q.dtype, jnp.float32))
  return _match(
    q,
    _ones_if_none(gt_valid, g),
    _ones_if_none(anchor_valid, a),
    high=high,
    low=low,
    allow=bool(allow_low_quality_matches),
    background_low=background_low,
  )


@functools.partial(jax.jit, static_argnames="s")
def _sample(labels, key, max_pos, *, s):
  """labels: [N] int, N > 0; max_pos: int, traced so that one program serves every fraction."""
  n, k = labels.shape[0], min(s, labels.shape[0])
  positive, negative = labels >= 1, labels == 0
  num_pos = jnp.minimum(positive.sum(), max_pos)
  num_neg = jnp.minimum(negative.sum(), s - num_pos)
  # Distinct random priorities: the top k of a class are a uniform k-subset of it.
  priority = jax.random.permutation(key, n).astype(jnp.int32)
  top = lambda member: jnp.pad(lax.top_k(jnp.where(member, priority, -1), k)[1], (0, s - k))
  j = jnp.arange(s)
  pos_idx, neg_idx = top(positive), top(negative)
  indices = jnp.where(j < num_pos, pos_idx, neg_idx[jnp.clip(j - num_pos, 0, s - 1)])
  valid = j < num_pos + num_neg
  return jnp.where(valid, indices, 0).astype(jnp.int32), valid


def sample(labels, key, *, num_samples, positive_fraction):
  """Balanced sampling with a static shape: torchvision's `BalancedPositiveNegativeSampler` counts.

  labels: [N] int, >= 1 positive, 0 negative, -1 ignored; key: a PRNG key.
  Takes num_pos = min(#positive, int(num_samples * positive_fraction)) positives and
  num_neg = min(#negative, num_samples - num_pos) negatives, uniformly at random.
  Returns (indices [num_samples] int32 into labels, the positives first, then the
  negatives, padded with 0; valid [num_samples] bool, True for the first
  num_pos + num_neg). The mask over labels is
  `jnp.zeros(N, bool).at[jnp.where(valid, indices, N)].set(True, mode="drop")`.
  """
  fn = "sample"
  s, max_pos = _sample_args(num_samples, positive_fraction, fn)
  if len(np.shape(labels)) != 1:
    raise ValueError(f"{fn}: labels must be [N] int (1, 0, -1), got shape {np.shape(labels)}")
  if np.shape(labels)[0] == 0:
    return jnp.zeros((s,), jnp.int32), jnp.zeros((s,), bool)
  return _sample(labels, key, max_pos, s=s)


class RPNTargets(NamedTuple):
  """Per anchor: labels [A] int32 (1, 0, -1, before sampling); sampled [A] bool, the
  anchors of the loss; matched_boxes [A, 4] each anchor's best ground truth (zeros
  without any); deltas [A, 4] `encode(matched_boxes, anchors)`, 0 where not positive."""

  labels: jax.Array
  sampled: jax.Array
  matched_boxes: jax.Array
  deltas: jax.Array


class RoITargets(NamedTuple):
  """Per sampled RoI, [S] = num_samples: rois [S, 4]; labels [S] int32, the class of
  the matched ground truth (>= 1), 0 background, -1 padding; matched_boxes [S, 4];
  deltas [S, 4] `encode(matched_boxes, rois, weights)`, 0 where not foreground;
  indices [S] int32 into the candidates (proposals, then the ground truth when
  appended); valid [S] bool, False for padding; matched_index [S] int32, the ground
  truth each RoI matched (its mask target in Mask R-CNN; meaningful where labels >= 1)."""

  rois: jax.Array
  labels: jax.Array
  matched_boxes: jax.Array
  deltas: jax.Array
  indices: jax.Array
  valid: jax.Array
  matched_index: jax.Array


def rpn_targets(
  anchors,
  gt_boxes,
  gt_valid,
  key,
  *,
  num_samples=256,
  positive_fraction=0.5,
  high=0.7,
  low=0.3,
  allow_low_quality_matches=True,
  anchor_valid=None,
  weights=(1.0, 1.0, 1.0, 1.0),
) -> RPNTargets:
  """RPN training targets of one image (torchvision's `RegionProposalNetwork.assign_targets_to_anchors`
  plus its sampling and `BoxCoder` with weights (1, 1, 1, 1)).

  anchors: [A, 4] (x1, y1, x2, y2) of positive size; gt_boxes: [G, 4], padded;
  gt_valid: [G] bool or None; key: PRNG key for the sample; anchor_valid: [A]
  bool or None, e.g. `anchors.inside_image(...)` for the paper's rule that anchors
  across the border are ignored in training. Defaults are Faster R-CNN's: IoU >= 0.7
  positive, < 0.3 negative, each box's best anchors positive, 256 samples, 50%.
  vmap over a batch: gt_boxes [B, G, 4], gt_valid [B, G], keys [B].
  Returns RPNTargets with [A] labels and sampled mask, [A, 4] matched boxes and deltas.
  """
  fn = "rpn_targets"
  _sample_args(num_samples, positive_fraction, fn)
  high, low, _ = _thresholds(high, low, None, fn)
  num_anchors = _num_boxes(anchors, "anchors", "A", fn)
  _check_mask(gt_valid, _num_boxes(gt_boxes, "gt_boxes", "G", fn), "gt_valid", "G", fn)
  _check_mask(anchor_valid, num_anchors, "anchor_valid", "A", fn)
  _check_boxes(anchors, "anchors", "A", fn)
  _check_boxes(gt_boxes, "gt_boxes", "G", fn, gt_valid)
  return _rpn_targets(
    anchors,
    gt_boxes,
    gt_valid,
    anchor_valid,
    key,
    num_samples=num_samples,
    positive_fraction=float(positive_fraction),
    high=high,
    low=low,
    allow=bool(allow_low_quality_matches),
    weights=tuple(weights),
  )


@functools.partial(
  jax.jit, static_argnames=("num_samples", "positive_fraction", "high", "low", "allow", "weights")
)
def _rpn_targets(anchors, gt_boxes, gt_valid, anchor_valid, key, **kw):
  n, g = anchors.shape[0], gt_boxes.shape[0]
  gt_valid = _ones_if_none(gt_valid, g)
  gt = _float_boxes(gt_boxes, gt_valid)
  anchors = _float_boxes(anchors, jnp.ones((n,), bool))
  matched, labels = match(
    box_ops.iou(gt, anchors),
    gt_valid,
    high=kw["high"],
    low=kw["low"],
    allow_low_quality_matches=kw["allow"],
    anchor_valid=_ones_if_none(anchor_valid, n),
  )
  indices, valid = sample(
    labels, key, num_samples=kw["num_samples"], positive_fraction=kw["positive_fraction"]
  )
  sampled = jnp.zeros((n,), bool).at[jnp.where(valid, indices, n)].set(True, mode="drop")
  matched_boxes = gt[matched] if g else jnp.zeros_like(anchors)
  # Only positives are regressed; the others' matched box may be padding (log 0).
  deltas = box_ops.encode(matched_boxes, anchors, kw["weights"])
  deltas = jnp.where((labels == 1)[:, None], deltas, 0)
  return RPNTargets(labels, sampled, matched_boxes, deltas)


def roi_targets(
  proposals,
  gt_boxes,
  gt_labels,
  gt_valid,
  key,
  *,
  proposal_valid=None,
  num_samples=512,
  positive_fraction=0.25,
  high=0.5,
  low=0.5,
  background_low=None,
  append_gt=True,
  weights=(10.0, 10.0, 5.0, 5.0),
) -> RoITargets:
  """RoI head training samples of one image (torchvision's `RoIHeads.select_training_samples`).

  proposals: [P, 4] (x1, y1, x2, y2), e.g. the RPN's NMS output; proposal_valid: [P]
  bool or None, False for padding; gt_boxes: [G, 4], padded; gt_labels: [G] int
  classes >= 1 (0 is background); gt_valid: [G] bool or None; key: PRNG key.
  append_gt: the valid ground truth boxes join the candidates, as torchvision does.
  Defaults are torchvision's Faster R-CNN: IoU >= 0.5 foreground, < 0.5
  background, 512 samples, 25% foreground, box coder weights (10, 10, 5, 5).
  Fast R-CNN: num_samples=64, background_low=0.1 (background IoU in [0.1, 0.5)).
  vmap over a batch like `rpn_targets`.
  Returns RoITargets of [num_samples] RoIs, foreground first.
  """
  fn = "roi_targets"
  _sample_args(num_samples, positive_fraction, fn)
  high, low, background_low = _thresholds(high, low, background_low, fn)
  g = _num_boxes(gt_boxes, "gt_boxes", "G", fn)
  _check_mask(gt_valid, g, "gt_valid", "G", fn)
  _check_mask(
    proposal_valid, _num_boxes(proposals, "proposals", "P", fn), "proposal_valid", "P", fn
  )
  _check_boxes(gt_boxes, "gt_boxes", "G", fn, gt_valid)
  _check_boxes(proposals, "proposals", "P", fn, proposal_valid)
  if np.shape(gt_labels) != (g,) or not jnp.issubdtype(jnp.result_type(gt_labels), jnp.integer):
    raise ValueError(
      f"{fn}: gt_labels must be [G] = [{g}] int, got shape {np.shape(gt_labels)} "
      f"dtype {jnp.result_type(gt_labels)}"
    )
  if _concrete(gt_labels, gt_valid) and (np.asarray(gt_labels)[_host_mask(gt_valid, g)] < 1).any():
    raise ValueError(f"{fn}: gt_labels of valid boxes must be classes >= 1 (0 is background)")
  return _roi_targets(
    proposals,
    proposal_valid,
    gt_boxes,
    gt_labels,
    gt_valid,
    key,
    num_samples=num_samples,
    positive_fraction=float(positive_fraction),
    high=high,
    low=low,
    background_low=background_low,
    append_gt=bool(append_gt),
    weights=tuple(weights),
  )


_ROI_STATIC = ("num_samples", "positive_fraction", "high", "low", "background_low", "append_gt")


@functools.partial(jax.jit, static_argnames=(*_ROI_STATIC, "weights"))
def _roi_targets(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, key, **kw):
  p, g = proposals.shape[0], gt_boxes.shape[0]
  proposal_valid, gt_valid = _ones_if_none(proposal_valid, p), _ones_if_none(gt_valid, g)
  candidates = _float_boxes(proposals, proposal_valid)
  candidate_valid = proposal_valid
  gt = _float_boxes(gt_boxes, gt_valid)
  if kw["append_gt"]:
    candidates = jnp.concatenate([candidates, gt.astype(candidates.dtype)])
    candidate_valid = jnp.concatenate([proposal_valid, gt_valid])
  matched, fg = match(
    box_ops.iou(gt, candidates),
    gt_valid,
    high=kw["high"],
    low=kw["low"],
    background_low=kw["background_low"],
    anchor_valid=candidate_valid,
  )
  classes = jnp.asarray(gt_labels, jnp.int32)[matched] if g else jnp.zeros_like(fg)
  labels = jnp.where(fg == 1, classes, fg)
  indices, valid = sample(
    labels, key, num_samples=kw["num_samples"], positive_fraction=kw["positive_fraction"]
  )
  rois = candidates[indices]
  labels = jnp.where(valid, labels[indices], -1)
  matched_boxes = gt[matched[indices]] if g else jnp.zeros_like(rois)
  # Padding RoIs may be empty boxes and background ones match padding: keep their 0/0 out.
  deltas = box_ops.encode(matched_boxes, rois, kw["weights"])
  deltas = jnp.where((labels >= 1)[:, None], deltas, 0)
  matched_index = matched[indices].astype(jnp.int32) if g else jnp.zeros_like(indices)
  return RoITargets(rois, labels, matched_boxes, deltas, indices, valid, matched_index)
