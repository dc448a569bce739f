"""The Region Proposal Network (Faster R-CNN, Ren et al. 2015) as torchvision builds it.

A 3x3 conv + ReLU slides over every feature map, then two 1x1 convs give, per position,
A objectness logits and 4A box deltas relative to the A anchors of that position
(`research.detection.anchors`); the same weights serve every FPN level. From these:

    proposals   (research.detection.proposals, re-exported here) per level the
                pre_nms_top_n best anchors by objectness, decoded, clipped
                to each image, tiny ones and those under score_thresh dropped, NMS at 0.7
                within each level, the post_nms_top_n best kept
    rpn_loss    256 anchors per image sampled (at most half positive) by
                `research.detection.assign.rpn_targets`; binary cross-entropy over them
                plus smooth L1 (beta 1/9) over the positives, both divided by the number
                of sampled anchors of the batch

exactly torchvision's `RPNHead`, `RegionProposalNetwork.filter_proposals` and
`compute_loss`, with static shapes: where torchvision drops boxes, a validity mask marks
them, so everything runs under `jax.jit` with one compilation whatever the number of
objects. Module names are torchvision's (>= 0.13: the 3x3 conv is a Conv2dNormActivation,
hence `conv.0.0`), so `research.convert.torchvision.convert` loads `rpn.head.*`.

Flat order: the anchor of level l, row y, column x and cell anchor a sits at
offset_l + (y * W_l + x) * A + a, torchvision's `concat_box_prediction_layers` and the
order of `anchors.multilevel_anchors`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.detection import anchors as anchors_lib
from research.detection import assign
from research.detection.proposals import (
  MIN_SIZE,
  _check,
  anchors_per_level,
  flatten_predictions,
  proposals,
)
from research.models.layers import Conv

__all__ = [
  "RPNHead",
  "RPN",
  "flatten_predictions",
  "anchors_per_level",
  "proposals",
  "anchor_targets",
  "image_keys",
  "rpn_loss",
  "smooth_l1",
  "FPN_ANCHOR_SIZES",
  "MIN_SIZE",
]

ModuleDef = Any

# torchvision's fasterrcnn_resnet50_fpn: one size per level P2..P6, three ratios each.
FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))


def _maps(features, name: str) -> list[jax.Array]:
  """A list/tuple of [N, H, W, C] maps, or a dict of them read in its order."""
  maps = list(features.values()) if isinstance(features, Mapping) else list(features)
  shapes = [tuple(np.shape(m)) for m in maps]
  if not maps or any(len(s) != 4 for s in shapes) or len({(s[0], s[3]) for s in shapes}) != 1:
    raise ValueError(
      f"{name}: features must be one or more maps [N, H, W, C] with the same N and C; "
      f"received shapes {shapes}."
    )
  return maps


class RPNHead(nn.Module):
  """torchvision's `RPNHead`: [L] maps [N, H_l, W_l, C] -> ([L] objectness [N, H_l, W_l, A],
  [L] deltas [N, H_l, W_l, 4A]), the channel a * 4 + j of the deltas being coordinate j
  (dx, dy, dw, dh) of cell anchor a.

  `__call__(features, *, train=False)`; features a list/tuple or a dict (read in its
  order) of maps; train is unused and accepted so the head is called as every model is.

  Attributes:
    num_anchors: A, anchors per position (len(sizes) * len(aspect_ratios) of a level).
    conv_depth: 3x3 conv + ReLU layers before the 1x1 convs (torchvision's default 1).
    conv: the conv module; dtype: the computation dtype, parameters stay float32.
  """

  num_anchors: int
  conv_depth: int = 1
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train: bool = False):
    del train
    maps = _maps(features, type(self).__name__)
    # torchvision: normal(std=0.01) weights and zero biases for every conv of the head.
    conv = functools.partial(
      self.conv,
      kernel_init=nn.initializers.normal(0.01),
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
    )
    channels = maps[0].shape[-1]
    convs = [conv(channels, (3, 3), padding=1, name=f"conv.{i}.0") for i in range(self.conv_depth)]
    cls_logits = conv(self.num_anchors, (1, 1), name="cls_logits")
    bbox_pred = conv(4 * self.num_anchors, (1, 1), name="bbox_pred")
    objectness, deltas = [], []
    for x in maps:
      t = x.astype(self.dtype)
      for c in convs:
        t = nn.relu(c(t))
      objectness.append(cls_logits(t))
      deltas.append(bbox_pred(t))
    return objectness, deltas


def anchor_targets(
  anchors,
  gt_boxes,
  gt_valid,
  key,
  *,
  batch_size_per_image: int = 256,
  positive_fraction: float = 0.5,
  fg_iou_thresh: float = 0.7,
  bg_iou_thresh: float = 0.3,
  anchor_valid=None,
) -> assign.RPNTargets:
  """`assign.rpn_targets` of every image of a batch, image i drawing with
  `image_keys(key, N)[i]` (key: one key, or one per image).

  anchors: [T, 4]; gt_boxes: [N, G, 4] padded; gt_valid: [N, G] bool; key: a PRNG key;
  anchor_valid: None, [T] or [N, T] bool (e.g. the paper's anchors inside the image).
  Returns RPNTargets with labels [N, T], sampled [N, T], matched_boxes and deltas [N, T, 4].
  """
  fn = "anchor_targets"
  t = np.shape(anchors)[0] if np.ndim(anchors) == 2 else None
  _check(anchors, (t, 4), "anchors", "[T, 4] (x1, y1, x2, y2)", fn)
  _check(gt_boxes, (None, None, 4), "gt_boxes", "[N, G, 4] (x1, y1, x2, y2), padded", fn)
  n, g = np.shape(gt_boxes)[:2]
  _check(gt_valid, (n, g), "gt_valid", f"[N, G] = [{n}, {g}] bool", fn)
  per_image = anchor_valid is not None and np.ndim(anchor_valid) == 2
  if anchor_valid is not None:
    _check(anchor_valid, (n, t) if per_image else (t,), "anchor_valid", "[T] or [N, T] bool", fn)
  targets = functools.partial(
    assign.rpn_targets,
    num_samples=batch_size_per_image,
    positive_fraction=positive_fraction,
    high=fg_iou_thresh,
    low=bg_iou_thresh,
    allow_low_quality_matches=True,
  )
  return jax.vmap(
    lambda gt, v, k, a: targets(anchors, gt, v, k, anchor_valid=a),
    in_axes=(0, 0, 0, 0 if per_image else None),
  )(gt_boxes, jnp.asarray(gt_valid, bool), image_keys(key, n), anchor_valid)


def image_keys(key, n: int) -> jax.Array:
  """[N] keys, one per image: `key` itself when it already holds N keys ([N] typed or
  [N, 2] raw, e.g. `research.train.steps.example_keys`, which keeps draws the same on one
  device and across devices), else `jax.random.split(key, N)`."""
  typed = jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
  if jnp.ndim(key) == (1 if typed else 2):
    if jnp.shape(key)[0] != n:
      raise ValueError(
        f"key: expected one key or {n} keys (one per image); received {n} images "
        f"and keys of shape {jnp.shape(key)}."
      )
    return key
  return jax.random.split(key, n)


def smooth_l1(x, beta: float):
  """torch's smooth_l1_loss terms: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta;
  the box loss of the RPN (beta 1/9) and of the RoI heads (1/9, the Fast R-CNN paper's 1)."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def rpn_loss(
  objectness,
  deltas,
  anchors,
  gt_boxes,
  gt_valid,
  key,
  *,
  batch_size_per_image: int = 256,
  positive_fraction: float = 0.5,
  fg_iou_thresh: float = 0.7,
  bg_iou_thresh: float = 0.3,
  anchor_valid=None,
) -> dict[str, jax.Array]:
  """The RPN's losses: torchvision's `RegionProposalNetwork.compute_loss`.

  objectness: [N, T] logits; deltas: [N, T, 4]; anchors: [T, 4]; gt_boxes: [N, G, 4]
  padded; gt_valid: [N, G] bool; key: PRNG key of the sampling; the rest as
  `anchor_targets`. With S the sampled anchors of the whole batch:
  loss_objectness = mean over S of the binary cross-entropy with logits, and
  loss_rpn_box_reg = sum over the positives of S of smooth L1 (beta 1/9) / |S|.
  An image without ground truth contributes negatives only. (|S| is taken as at least 1;
  torchvision gives NaN when no anchor can be sampled.)
  Returns {"loss_objectness": [], "loss_rpn_box_reg": []} float32.
  """
  t = anchor_targets(
    anchors,
    gt_boxes,
    gt_valid,
    key,
    batch_size_per_image=batch_size_per_image,
    positive_fraction=positive_fraction,
    fg_iou_thresh=fg_iou_thresh,
    bg_iou_thresh=bg_iou_thresh,
    anchor_valid=anchor_valid,
  )
  _check(objectness, t.labels.shape, "objectness", f"[N, T] = {list(t.labels.shape)}", "rpn_loss")
  _check(deltas, t.deltas.shape, "deltas", f"[N, T, 4] = {list(t.deltas.shape)}", "rpn_loss")
  x = jnp.asarray(objectness, jnp.float32)
  y = (t.labels == 1).astype(jnp.float32)
  num_sampled = jnp.maximum(t.sampled.sum(), 1).astype(jnp.float32)
  # log(1 + exp(x)) - x y without overflow, torch's binary_cross_entropy_with_logits.
  bce = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
  positive = t.sampled & (t.labels == 1)
  box = smooth_l1(jnp.asarray(deltas, jnp.float32) - t.deltas, 1 / 9).sum(axis=-1)
  return {
    "loss_objectness": jnp.where(t.sampled, bce, 0).sum() / num_sampled,
    "loss_rpn_box_reg": jnp.where(positive, box, 0).sum() / num_sampled,
  }


class RPN(nn.Module):
  """The head, its anchors, proposals and loss, with torchvision's `RegionProposalNetwork`
  settings (FasterRCNN's `rpn_*` keywords without the prefix; defaults are
  fasterrcnn_resnet50_fpn's).

  `__call__(features, image_sizes=None, gt_boxes=None, gt_valid=None, *, image_shape_hw,
  train=False)`: features [L] maps [N, H_l, W_l, C] (or a dict, read in its order);
  image_sizes [N, 2] (height, width) of each image inside the padded batch (None: the
  whole (H, W)); image_shape_hw the static (H, W) of the padded batch, from which the
  anchors' strides follow as torchvision computes them; in training gt_boxes [N, G, 4]
  and gt_valid [N, G], and the "sample" RNG stream draws the anchors of the loss (or
  `keys`, one per image: see `image_keys`).
  allowed_border: None (torchvision: every anchor takes part in the loss) or the paper's
  rule, anchors crossing an image's border by more than that many pixels ignored in
  training (`anchors.inside_image` of each image's size; 0 in FasterRCNN_VGG16); proposals use every anchor either way.
  Returns (proposals {"boxes": [N, P, 4], "scores": [N, P], "valid": [N, P]}, P the
  post_nms_top_n of the mode; losses, {} or rpn_loss's dict in training;
  out {"objectness": [N, T], "deltas": [N, T, 4], "anchors": [T, 4]}).
  """

  anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES
  aspect_ratios: Sequence[Any] = anchors_lib.ASPECT_RATIOS
  pre_nms_top_n_train: int = 2000
  pre_nms_top_n_test: int = 1000
  post_nms_top_n_train: int = 2000
  post_nms_top_n_test: int = 1000
  nms_thresh: float = 0.7
  fg_iou_thresh: float = 0.7
  bg_iou_thresh: float = 0.3
  batch_size_per_image: int = 256
  positive_fraction: float = 0.5
  score_thresh: float = 0.0
  allowed_border: float | None = None
  conv_depth: int = 1
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32

  @property
  def num_anchors(self) -> int:
    """A, anchors per position; torchvision's head needs the same A on every level."""
    ratios = self.aspect_ratios
    per_level = ratios if not np.isscalar(ratios[0]) else (ratios,) * len(self.anchor_sizes)
    counts = {len(s) * len(r) for s, r in zip(self.anchor_sizes, per_level)}
    if len(counts) != 1:
      raise ValueError(
        f"RPN: every level needs the same number of anchors for the shared head; sizes "
        f"{self.anchor_sizes} and aspect_ratios {self.aspect_ratios} give {sorted(counts)}."
      )
    return counts.pop()

  @nn.compact
  def __call__(
    self,
    features,
    image_sizes=None,
    gt_boxes=None,
    gt_valid=None,
    *,
    image_shape_hw,
    train=False,
    keys=None,
  ):
    maps = _maps(features, type(self).__name__)
    head = RPNHead(self.num_anchors, self.conv_depth, self.conv, self.dtype, name="head")
    obj_maps, delta_maps = head(maps)
    objectness, deltas = flatten_predictions(obj_maps, delta_maps)
    anchors = jnp.asarray(
      anchors_lib.multilevel_anchors(
        image_shape_hw, [m.shape[1:3] for m in maps], self.anchor_sizes, self.aspect_ratios
      )
    )
    n = maps[0].shape[0]
    if image_sizes is None:
      image_sizes = jnp.broadcast_to(jnp.asarray(image_shape_hw, jnp.float32), (n, 2))
    k = self.post_nms_top_n_train if train else self.post_nms_top_n_test
    if self.is_initializing():
      # Parameters need shapes only: proposal selection (top-k, NMS) has none, and its
      # op-by-op compilation was most of an eager `init`'s time. The heads get zero boxes.
      out = {"objectness": objectness, "deltas": deltas, "anchors": anchors}
      empty = {"boxes": jnp.zeros((n, k, 4)), "scores": jnp.zeros((n, k))}
      return {**empty, "valid": jnp.zeros((n, k), bool)}, {}, out
    boxes, scores, valid = proposals(
      objectness,
      deltas,
      anchors,
      image_sizes,
      anchors_per_level(obj_maps),
      pre_nms_top_n=self.pre_nms_top_n_train if train else self.pre_nms_top_n_test,
      post_nms_top_n=k,
      nms_thresh=self.nms_thresh,
      score_thresh=self.score_thresh,
    )
    losses = {}
    if train:
      if gt_boxes is None or gt_valid is None:
        raise ValueError("RPN: training needs gt_boxes [N, G, 4] and gt_valid [N, G].")
      losses = rpn_loss(
        objectness,
        deltas,
        anchors,
        gt_boxes,
        gt_valid,
        self.make_rng("sample") if keys is None else keys,
        batch_size_per_image=self.batch_size_per_image,
        positive_fraction=self.positive_fraction,
        fg_iou_thresh=self.fg_iou_thresh,
        bg_iou_thresh=self.bg_iou_thresh,
        anchor_valid=None
        if self.allowed_border is None
        else jax.vmap(anchors_lib.inside_image, (None, 0, None))(
          anchors, image_sizes, self.allowed_border
        ),
      )
    out = {"objectness": objectness, "deltas": deltas, "anchors": anchors}
    return {"boxes": boxes, "scores": scores, "valid": valid}, losses, out
