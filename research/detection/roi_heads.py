"""The RoI heads of Fast and Faster R-CNN: RoI features, box head, predictor, loss, detections.

torchvision's `RoIHeads` split, with static shapes (proposals [N, R, 4] padded, with a
[N, R] validity mask) so that one compiled program serves any number of objects:

    multiscale_roi_align     RoI Align 7x7 from the FPN level of each RoI (torchvision's
    single_scale_roi_pool    MultiScaleRoIAlign); RoI max pooling 7x7 on one map (Fast R-CNN)
    TwoMLPHead               fc6, fc7 with ReLU (box_head of fasterrcnn_resnet50_fpn)
    VGGBoxHead               VGG's classifier.0 and classifier.3 (fc6, fc7) reused as the head
    FastRCNNPredictor        cls_score (K classes, background 0) and bbox_pred (4K deltas)
    fast_rcnn_loss           cross-entropy + smooth L1 on the true class's deltas
    postprocess              softmax, per-class decode, clip, thresholds, NMS, top detections
    RoIHeads                 all of it with torchvision's defaults; samples with
                             research.detection.assign.roi_targets in training

Module names are torchvision's (`box_head.fc6`, `box_predictor.cls_score`), so
`research.convert.torchvision.convert` loads `roi_heads.*` weights. Features are NHWC;
heads flatten each RoI's [7, 7, C] in torchvision's (C, H, W) order, so converted fc6
weights need no permutation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.detection.assign import roi_targets
from research.detection.rpn import image_keys
from research.models.alexnet import flatten_chw
from research.ops import boxes as box_ops
from research.ops.conv import _pair
from research.ops.roi import roi_pool
from research.ops.roi.align import _align_axis, _gather_sum

ModuleDef = Any
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's RoIHeads box coder

# --------------------------------------------------------------------------- RoI features


def _maps(features, featmap_names, fn: str) -> list:
  """A dict (kept in order, filtered by featmap_names), list or single map -> [N, H, W, C] maps."""
  if isinstance(features, Mapping):
    names = list(features) if featmap_names is None else list(featmap_names)
    missing = [k for k in names if k not in features]
    if missing:
      raise ValueError(f"{fn}: features has no maps {missing}; it has {list(features)}")
    maps = [features[k] for k in names]
  elif isinstance(features, (list, tuple)):
    maps = list(features)
  else:
    maps = [features]
  maps = [jnp.asarray(m) for m in maps]
  if not maps or any(m.ndim != 4 for m in maps):
    raise ValueError(f"{fn}: features must be [N, H, W, C] maps, got {[m.shape for m in maps]}")
  n, c = maps[0].shape[0], maps[0].shape[3]
  if any(m.shape[0] != n or m.shape[3] != c for m in maps):
    raise ValueError(f"{fn}: maps must share N and C, got {[m.shape for m in maps]}")
  return maps


def _check_boxes(boxes, n: int, fn: str):
  boxes = jnp.asarray(boxes)
  if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
    raise ValueError(f"{fn}: boxes must be [N={n}, R, 4] (x1, y1, x2, y2), got {boxes.shape}")
  return boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))


def infer_scale(feature_hw: Sequence[int], image_hw: Sequence[int]) -> float:
  """torchvision's `_infer_scale`: 2**round(log2(H_l / H)), from the heights only."""
  ratio = np.float32(float(feature_hw[0]) / float(image_hw[0]))
  return float(2.0 ** float(np.round(np.log2(ratio))))


def roi_levels(boxes, k_min: int, k_max: int, canonical_scale=224, canonical_level=4):
  """torchvision's LevelMapper (FPN eq. 1): boxes [..., 4] -> [...] int32 level - k_min.

  level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6),
  clamped to [k_min, k_max], in float32 as torchvision.
  """
  s = jnp.sqrt(box_ops.area(boxes).astype(jnp.float32))
  level = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + np.float32(1e-6))
  return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("out_hw", "scales", "ratio", "levels"))
def _multiscale(maps, boxes, *, out_hw, scales, ratio, levels):
  n, r = boxes.shape[:2]
  oh, ow = out_hw
  # Proposals are constants to the head, as in torchvision (approximate joint training).
  boxes = lax.stop_gradient(boxes).reshape(n * r, 4)
  level = roi_levels(boxes, *levels) if len(maps) > 1 else jnp.zeros((n * r,), jnp.int32)
  image = jnp.repeat(jnp.arange(n, dtype=jnp.int32), r)
  # Every level's taps are computed (cheap: [R, 7, T] per axis), only the RoI's own
  # level is gathered, from one table of all levels: flat row = base + y * W_l + x.
  # That is one RoI Align's work instead of one per level.
  taps, offset = [], 0
  for fmap, scale in zip(maps, scales):
    h, w = fmap.shape[1:3]
    b = boxes * jnp.asarray(scale, boxes.dtype)  # a power of 2: exact, as torchvision's
    bound = (-(-h // oh), -(-w // ow)) if ratio <= 0 else (0, 0)
    ys, wy = _align_axis(b[:, 1], b[:, 3], oh, h, ratio, bound[0], False)
    xs, wx = _align_axis(b[:, 0], b[:, 2], ow, w, ratio, bound[1], False)
    taps.append([offset + image * (h * w), ys * w, wy, xs, wx])
    offset += n * h * w
  width = [max(t[i].shape[-1] for t in taps) for i in (1, 3)]

  def pick(i):
    # Levels with fewer taps (adaptive sampling) are padded with weight-0 taps of row 0.
    parts = [t[i] for t in taps]
    if i:
      pad = width[0 if i < 3 else 1]
      parts = [jnp.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, pad - p.shape[-1])]) for p in parts]
    return jnp.stack(parts)[level, jnp.arange(n * r)]  # [L, R, ...] -> [R, ...]

  table = jnp.concatenate([m.reshape(-1, m.shape[-1]) for m in maps])
  # size (1, 1): _gather_sum's flat index (i * 1 + y) * 1 + x is then base + y * W_l + x.
  out = _gather_sum((1, 1), table, *[pick(i) for i in range(5)])
  return out.astype(maps[0].dtype).reshape(n, r, oh, ow, -1)


def multiscale_roi_align(
  features,
  boxes,
  image_hw,
  *,
  output_size=7,
  sampling_ratio: int = 2,
  canonical_scale: int = 224,
  canonical_level: int = 4,
  featmap_names: Sequence[str] | None = None,
) -> jax.Array:
  """torchvision's MultiScaleRoIAlign (aligned=False): each RoI pooled from its FPN level.

  features: {name: [N, H_l, W_l, C]} finest first (featmap_names picks and orders
  them; None: all), or a list of such maps. boxes: [N, R, 4] (x1, y1, x2, y2) in
  image pixels. image_hw: static (H, W) ints, the largest image of the batch (as
  torchvision) or the padded batch, which infer the same scales
  2**round(log2(H_l / H)) unless images are tiny. Levels k = -log2(scale) map RoIs by
  `roi_levels`. Returns [N, R, oh, ow, C]; the gradient reaches the features only.
  """
  fn = "multiscale_roi_align"
  maps = _maps(features, featmap_names, fn)
  boxes = _check_boxes(boxes, maps[0].shape[0], fn)
  if len(image_hw) != 2:
    raise ValueError(f"{fn}: image_hw must be a static (H, W) pair, got {image_hw!r}")
  image_hw = tuple(int(v) for v in image_hw)  # a traced size raises here: scales are static
  out_hw = _pair(output_size, "output_size", fn, positive=True)
  scales = tuple(infer_scale(m.shape[1:3], image_hw) for m in maps)
  k_min, k_max = (int(-math.log2(s)) for s in (scales[0], scales[-1]))
  if not jnp.issubdtype(maps[0].dtype, jnp.inexact):
    maps = [m.astype(jnp.float32) for m in maps]
  return _multiscale(
    tuple(maps),
    boxes,
    out_hw=out_hw,
    scales=scales,
    ratio=max(int(sampling_ratio), 0),
    levels=(k_min, k_max, canonical_scale, canonical_level),
  )


def single_scale_roi_pool(
  feature, boxes, *, output_size=7, spatial_scale: float = 1 / 16
) -> jax.Array:
  """Fast R-CNN's RoI max pooling on one map (VGG-16's conv5_3: 7x7 at 1/16).

  feature: [N, H, W, C]; boxes: [N, R, 4] (x1, y1, x2, y2) in image pixels.
  Returns [N, R, oh, ow, C] (research.ops.roi.roi_pool, torchvision's numbers).
  """
  feature = jnp.asarray(feature)
  if feature.ndim != 4:
    raise ValueError(f"single_scale_roi_pool: feature must be [N, H, W, C], got {feature.shape}")
  n = feature.shape[0]
  boxes = _check_boxes(boxes, n, "single_scale_roi_pool")
  r = boxes.shape[1]
  image = jnp.repeat(jnp.arange(n, dtype=boxes.dtype), r)[:, None]
  rois = jnp.concatenate([image, boxes.reshape(n * r, 4)], axis=1)
  out = roi_pool(feature, rois, output_size, spatial_scale=spatial_scale)
  return out.reshape(n, r, *out.shape[1:])


# --------------------------------------------------------------------------- heads


def _torch_dense(features: int, fan_in: int, name: str, dtype) -> nn.Dense:
  """torch's nn.Linear default init: weight and bias uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(
    features,
    kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
    bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound
    ),
    dtype=dtype,
    name=name,
  )


def _flatten_rois(x):
  """[..., oh, ow, C] -> [..., C * oh * ow] in torch's (C, H, W) order."""
  return flatten_chw(x.reshape(-1, *x.shape[-3:])).reshape(*x.shape[:-3], -1)


class TwoMLPHead(nn.Module):
  """torchvision's TwoMLPHead: x [..., oh, ow, C] -> relu(fc7(relu(fc6(flat)))) [..., rep]."""

  representation_size: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout, as torchvision's
    x = _flatten_rois(x)
    x = nn.relu(_torch_dense(self.representation_size, x.shape[-1], "fc6", self.dtype)(x))
    return nn.relu(_torch_dense(self.representation_size, x.shape[-1], "fc7", self.dtype)(x))


class VGGBoxHead(nn.Module):
  """Fast R-CNN's box head: VGG's fc6, fc7 (ReLU, dropout) on RoI-pooled conv5_3.

  x [..., 7, 7, 512] -> [..., hidden]. Names are research.models.vgg.VGG's
  (`classifier.0`, `classifier.3`; torchvision's vgg16), so the ImageNet
  classifier's first two layers load as the head, as the paper initializes it.
  """

  hidden: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype)
    x = nn.relu(dense(self.hidden, name="classifier.0")(_flatten_rois(x)))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="classifier.2")(x)
    x = nn.relu(dense(self.hidden, name="classifier.3")(x))
    return nn.Dropout(self.dropout_rate, deterministic=not train, name="classifier.5")(x)


class FastRCNNPredictor(nn.Module):
  """x [..., D] -> (class_logits [..., K], box_regression [..., 4K]); class 0 is background."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # the uniform signature convert and RoIHeads call
    d = x.shape[-1]
    scores = _torch_dense(self.num_classes, d, "cls_score", self.dtype)(x)
    return scores, _torch_dense(4 * self.num_classes, d, "bbox_pred", self.dtype)(x)


# --------------------------------------------------------------------------- loss


def smooth_l1(x, beta: float):
  """torch's smooth_l1_loss terms: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta."""
  a = jnp.abs(x)
  return jnp.where(a < beta, 0.5 * x * x / beta, a - 0.5 * beta)


def fast_rcnn_loss(class_logits, box_regression, labels, regression_targets, valid=None) -> dict:
  """torchvision's fastrcnn_loss over the sampled RoIs, padding excluded.

  class_logits: [..., K]; box_regression: [..., 4K]; labels: [...] int, class >= 1,
  0 background, -1 padding; regression_targets: [..., 4]; valid: [...] bool (default
  labels >= 0). Cross-entropy averaged over valid RoIs; smooth L1 (beta 1/9) summed
  over the true class's deltas of valid foreground RoIs, divided by the valid count.
  Without any valid RoI both are 0. Returns {"loss_classifier", "loss_box_reg"}.
  """
  k = class_logits.shape[-1]
  lead = class_logits.shape[:-1]
  if box_regression.shape != (*lead, 4 * k) or labels.shape != lead:
    raise ValueError(
      f"fast_rcnn_loss: class_logits {class_logits.shape} needs box_regression "
      f"{(*lead, 4 * k)} and labels {lead}, got {box_regression.shape} and {labels.shape}"
    )
  if regression_targets.shape != (*lead, 4):
    raise ValueError(
      f"fast_rcnn_loss: regression_targets must be {(*lead, 4)}, got {regression_targets.shape}"
    )
  valid = labels >= 0 if valid is None else valid.astype(bool) & (labels >= 0)
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  count = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  deltas = box_regression.astype(jnp.float32).reshape(*lead, k, 4)
  deltas = jnp.take_along_axis(deltas, labels[..., None, None], axis=-2)[..., 0, :]
  box = smooth_l1(deltas - regression_targets.astype(jnp.float32), 1.0 / 9).sum(-1)
  return {
    "loss_classifier": jnp.where(valid, nll, 0).sum() / count,
    "loss_box_reg": jnp.where(valid & (labels > 0), box, 0).sum() / count,
  }


# --------------------------------------------------------------------------- detections


@functools.partial(jax.jit, static_argnames=("score_thresh", "nms_thresh", "top", "min_size", "w"))
def _postprocess(
  logits, regression, proposals, valid, image_hw, *, score_thresh, nms_thresh, top, min_size, w
):
  r, k = logits.shape[1:]

  def one(logits, regression, proposals, valid, hw):
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, 1:]  # background dropped
    deltas = regression.reshape(r, k, 4)[:, 1:].astype(jnp.float32)
    boxes = box_ops.clip(box_ops.decode(deltas, proposals[:, None, :], w), hw)
    labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (r, k - 1))
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = jnp.repeat(valid, k - 1) & (scores > score_thresh)
    keep &= box_ops.remove_small_boxes(boxes, min_size)
    # Dropped boxes at 0: batched_nms offsets classes by the largest coordinate, which
    # is then that of the kept boxes, as torchvision's over its filtered boxes.
    boxes = jnp.where(keep[:, None], boxes, 0)
    index, ok = box_ops.batched_nms(boxes, scores, labels, nms_thresh, max_output=top, valid=keep)
    return {
      "boxes": jnp.where(ok[:, None], boxes[index], 0),
      "scores": jnp.where(ok, scores[index], 0),
      "labels": jnp.where(ok, labels[index], 0),
      "valid": ok,
    }

  return jax.vmap(one)(logits, regression, proposals, valid, image_hw)


def postprocess(
  class_logits,
  box_regression,
  proposals,
  proposal_valid,
  image_hw,
  *,
  score_thresh: float = 0.05,
  nms_thresh: float = 0.5,
  detections_per_img: int = 100,
  min_size: float = 1e-2,
  weights=BOX_WEIGHTS,
) -> dict:
  """torchvision's RoIHeads.postprocess_detections with static shapes.

  class_logits: [N, R, K] (or [N * R, K]); box_regression: [N, R, 4K]; proposals: [N, R, 4];
  proposal_valid: [N, R] bool; image_hw: [N, 2] each image's (height, width), may be
  traced. Softmax, each class's box decoded (weights) and clipped, background dropped,
  scores > score_thresh and sides >= min_size kept, NMS per class, the best
  detections_per_img by score. Returns {"boxes" [N, D, 4], "scores" [N, D], "labels"
  [N, D] int32 (>= 1), "valid" [N, D] bool}, D = detections_per_img, padding zeros.
  """
  proposals = jnp.asarray(proposals)
  if proposals.ndim != 3 or proposals.shape[-1] != 4:
    raise ValueError(f"postprocess: proposals must be [N, R, 4], got {proposals.shape}")
  n, r = proposals.shape[:2]
  k = class_logits.shape[-1]
  class_logits = jnp.asarray(class_logits).reshape(n, r, k)
  box_regression = jnp.asarray(box_regression).reshape(n, r, 4 * k)
  if np.shape(proposal_valid) != (n, r) or np.shape(image_hw) != (n, 2):
    raise ValueError(
      f"postprocess: proposal_valid must be [{n}, {r}] and image_hw [{n}, 2], got "
      f"{np.shape(proposal_valid)} and {np.shape(image_hw)}"
    )
  return _postprocess(
    class_logits,
    box_regression,
    proposals.astype(jnp.promote_types(proposals.dtype, jnp.float32)),
    jnp.asarray(proposal_valid, bool),
    jnp.asarray(image_hw, jnp.float32),
    score_thresh=float(score_thresh),
    nms_thresh=float(nms_thresh),
    top=int(detections_per_img),
    min_size=float(min_size),
    w=tuple(float(v) for v in weights),
  )


# --------------------------------------------------------------------------- RoIHeads


class RoIHeads(nn.Module):
  """torchvision's RoIHeads (boxes only) with fasterrcnn_resnet50_fpn's defaults.

  pooler "multiscale_roi_align" (featmap_names of the FPN, output_size, sampling_ratio)
  or "roi_pool" (one map, spatial_scale; Fast R-CNN with VGG16 and box_head=VGGBoxHead).
  box_head: a module factory, called as box_head(name="box_head")(x, train=); dtype is the
  predictor's. Training samples are `roi_targets`' (Fast R-CNN's paper: 64 or 128 per
  image, background_low=0.1 for background IoU in [0.1, 0.5)).
  """

  num_classes: int
  box_head: Callable[..., nn.Module] = TwoMLPHead
  pooler: str = "multiscale_roi_align"
  featmap_names: Sequence[str] | None = ("0", "1", "2", "3")
  output_size: int = 7
  sampling_ratio: int = 2
  spatial_scale: float = 1 / 16
  fg_iou_thresh: float = 0.5
  bg_iou_thresh: float = 0.5
  background_low: float | None = None
  batch_size_per_image: int = 512
  positive_fraction: float = 0.25
  bbox_reg_weights: tuple[float, float, float, float] = BOX_WEIGHTS
  score_thresh: float = 0.05
  nms_thresh: float = 0.5
  detections_per_img: int = 100
  dtype: Any = jnp.float32

  def pool(self, features, boxes, image_shape):
    """RoI features [N, R, oh, ow, C] of boxes [N, R, 4] in the padded batch's pixels."""
    if self.pooler == "roi_pool":
      maps = _maps(features, self.featmap_names, "RoIHeads")
      if len(maps) != 1:
        raise ValueError(f"RoIHeads: roi_pool pools one map, got {len(maps)}")
      return single_scale_roi_pool(
        maps[0], boxes, output_size=self.output_size, spatial_scale=self.spatial_scale
      )
    if self.pooler != "multiscale_roi_align":
      raise ValueError(
        f"RoIHeads: pooler must be 'multiscale_roi_align' or 'roi_pool', got {self.pooler!r}"
      )
    return multiscale_roi_align(
      features,
      boxes,
      image_shape,
      output_size=self.output_size,
      sampling_ratio=self.sampling_ratio,
      featmap_names=self.featmap_names,
    )

  @nn.compact
  def __call__(
    self,
    features,
    proposals,
    proposal_valid,
    image_hw,
    *,
    image_shape,
    targets=None,
    train: bool = False,
    keys=None,
  ):
    """features: {name: [N, H_l, W_l, C]}; proposals: [N, P, 4] image pixels; proposal_valid:
    [N, P] bool; image_hw: [N, 2] each image's size before padding (clipping); image_shape:
    static (H, W) of the padded batch (feature scales); targets (train): {"boxes" [N, G, 4],
    "labels" [N, G] int >= 1, "valid" [N, G] bool}; train samples with the "sample" rng, or
    with `keys`, one per image (`research.detection.rpn.image_keys`).

    Returns (detections, losses): in training (None, {"loss_classifier", "loss_box_reg"}),
    else (postprocess's dict, {}).
    """
    head = self.box_head(name="box_head")
    predictor = FastRCNNPredictor(self.num_classes, dtype=self.dtype, name="box_predictor")
    proposal_valid = jnp.asarray(proposal_valid, bool)
    # Padding proposals may hold anything; zero boxes pool harmlessly.
    proposals = jnp.where(proposal_valid[..., None], proposals, 0)
    if train:
      if targets is None:
        raise ValueError("RoIHeads: training needs targets {'boxes', 'labels', 'valid'}")
      keys = image_keys(self.make_rng("sample") if keys is None else keys, proposals.shape[0])
      sample = functools.partial(
        roi_targets,
        num_samples=self.batch_size_per_image,
        positive_fraction=self.positive_fraction,
        high=self.fg_iou_thresh,
        low=self.bg_iou_thresh,
        background_low=self.background_low,
        weights=self.bbox_reg_weights,
      )
      t = jax.vmap(lambda p, v, b, c, g, key: sample(p, b, c, g, key, proposal_valid=v))(
        proposals, proposal_valid, targets["boxes"], targets["labels"], targets["valid"], keys
      )
      x = head(self.pool(features, lax.stop_gradient(t.rois), image_shape), train=True)
      logits, regression = predictor(x)
      return None, fast_rcnn_loss(logits, regression, t.labels, t.deltas, t.valid)
    if self.is_initializing():
      # The heads' parameters need the pooled features' shape only; pooling and postprocess
      # (batched NMS) have no parameters, and op by op they were most of an eager init.
      pooled = jax.eval_shape(lambda f, p: self.pool(f, p, image_shape), features, proposals)
      predictor(head(jnp.zeros(pooled.shape, pooled.dtype), train=False))
      return {}, {}
    x = head(self.pool(features, proposals, image_shape), train=False)
    logits, regression = predictor(x)
    detections = postprocess(
      logits,
      regression,
      proposals,
      proposal_valid,
      image_hw,
      score_thresh=self.score_thresh,
      nms_thresh=self.nms_thresh,
      detections_per_img=self.detections_per_img,
      weights=self.bbox_reg_weights,
    )
    return detections, {}
