"""The RoI heads of Fast, Faster and Mask R-CNN: box head, predictor, loss, detections.

torchvision's `RoIHeads` split, with static shapes (proposals [N, R, 4] padded, with a
[N, R] validity mask) so that one compiled program serves any number of objects; RoI
features come from research.detection.poolers (RoI Align on FPN levels, RoI pooling):

    TwoMLPHead               fc6, fc7 with ReLU (box_head of fasterrcnn_resnet50_fpn)
    VGGBoxHead               VGG's classifier.0 and classifier.3 (fc6, fc7) reused as the head
    FastRCNNPredictor        cls_score (K classes, background 0) and bbox_pred (4K deltas)
    fast_rcnn_loss           cross-entropy + smooth L1 on the true class's deltas
    postprocess              (research.detection.postprocess, re-exported here)
                             softmax, per-class decode, clip, thresholds, NMS, top detections
    RoIHeads                 all of it with torchvision's defaults; samples with
                             research.detection.assign.roi_targets in training; with a
                             mask head and predictor (research.detection.mask_head) also
                             Mask R-CNN's mask branch, its loss and mask probabilities

Module names are torchvision's (`box_head.fc6`, `box_predictor.cls_score`), so
`research.convert.torchvision.convert` loads `roi_heads.*` weights. Features are NHWC;
heads flatten each RoI's [7, 7, C] in torchvision's (C, H, W) order, so converted fc6
weights need no permutation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from research.detection import mask_head as masks_lib
from research.detection.assign import roi_targets
from research.detection.poolers import (
  _maps,
  multiscale_roi_align,
  multiscale_roi_pool,
  single_scale_roi_pool,
)
from research.detection.postprocess import BOX_WEIGHTS, postprocess, select_detections
from research.detection.rpn import image_keys, smooth_l1
from research.models.alexnet import flatten_chw

__all__ = [
  "TwoMLPHead",
  "VGGBoxHead",
  "FastRCNNPredictor",
  "fast_rcnn_loss",
  "postprocess",
  "select_detections",
  "RoIHeads",
  "BOX_WEIGHTS",
]

ModuleDef = Any

# --------------------------------------------------------------------------- heads


def _torch_dense(features: int, fan_in: int, name: str, dtype) -> nn.Dense:
  """torch's nn.Linear default init: weight and bias uniform in +-1/sqrt(fan_in)."""
  return nn.Dense(
    features,
    kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
    bias_init=masks_lib.torch_bias(fan_in),
    dtype=dtype,
    name=name,
  )


def _flatten_rois(x):
  """[..., oh, ow, C] -> [..., C * oh * ow] in torch's (C, H, W) order."""
  return flatten_chw(x.reshape(-1, *x.shape[-3:])).reshape(*x.shape[:-3], -1)


def _svd_first(rank: int | None, name: str, dtype):
  """Fast R-CNN's truncated SVD (Section 3.1): layer `name` with a rank is two layers, its
  first "{name}_svd" [in, rank] without bias (research.detection.fast_rcnn.factor_layers
  fills both from a trained kernel); without a rank, nothing."""
  if rank is None:
    return lambda x: x
  return nn.Dense(rank, use_bias=False, dtype=dtype, name=f"{name}_svd")


class TwoMLPHead(nn.Module):
  """torchvision's TwoMLPHead: x [..., oh, ow, C] -> relu(fc7(relu(fc6(flat)))) [..., rep].

  svd_ranks: (fc6's, fc7's) truncated-SVD ranks for detection, None for full layers.
  """

  representation_size: int = 1024
  svd_ranks: tuple[int | None, int | None] = (None, None)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout, as torchvision's
    x = _flatten_rois(x)
    for name, rank in zip(("fc6", "fc7"), self.svd_ranks, strict=True):
      fan_in = x.shape[-1]
      x = _svd_first(rank, name, self.dtype)(x)
      x = nn.relu(_torch_dense(self.representation_size, fan_in, name, self.dtype)(x))
    return x


class VGGBoxHead(nn.Module):
  """Fast R-CNN's box head: VGG's fc6, fc7 (ReLU, dropout) on RoI-pooled conv5_3.

  x [..., 7, 7, 512] -> [..., hidden]. Names are research.models.vgg.VGG's
  (`classifier.0`, `classifier.3`; torchvision's vgg16), so the ImageNet
  classifier's first two layers load as the head, as the paper initializes it.
  """

  hidden: int = 4096
  dropout_rate: float = 0.5
  svd_ranks: tuple[int | None, int | None] = (None, None)  # the paper's: (1024, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    dense = functools.partial(nn.Dense, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype)
    x = _flatten_rois(x)
    for i, rank in zip((0, 3), self.svd_ranks, strict=True):
      x = _svd_first(rank, f"classifier.{i}", self.dtype)(x)
      x = nn.relu(dense(self.hidden, name=f"classifier.{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"classifier.{i + 2}")(x)
    return x


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


def fast_rcnn_loss(
  class_logits, box_regression, labels, regression_targets, valid=None, *, beta: float = 1.0 / 9
) -> dict:
  """torchvision's fastrcnn_loss over the sampled RoIs, padding excluded.

  class_logits: [..., K]; box_regression: [..., 4K]; labels: [...] int, class >= 1,
  0 background, -1 padding; regression_targets: [..., 4]; valid: [...] bool (default
  labels >= 0). Cross-entropy averaged over valid RoIs; smooth L1 (torchvision's beta
  1/9; the Fast R-CNN paper's is 1) summed over the true class's deltas of valid
  foreground RoIs, divided by the valid count.
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
  box = smooth_l1(deltas - regression_targets.astype(jnp.float32), beta).sum(-1)
  return {
    "loss_classifier": jnp.where(valid, nll, 0).sum() / count,
    "loss_box_reg": jnp.where(valid & (labels > 0), box, 0).sum() / count,
  }


# --------------------------------------------------------------------------- RoIHeads


_POOLERS = ("multiscale_roi_align", "multiscale_roi_pool", "roi_pool")


class RoIHeads(nn.Module):
  """torchvision's RoIHeads with fasterrcnn_resnet50_fpn's defaults; with `mask_head` and
  `mask_predictor`, maskrcnn_resnet50_fpn's (the mask branch on 14x14 RoI Align features).

  pooler "multiscale_roi_align" (featmap_names of the FPN, output_size, sampling_ratio),
  "multiscale_roi_pool" (RoI max pooling from the same levels: Mask R-CNN's ablation) or
  "roi_pool" (one map, spatial_scale; Fast R-CNN with VGG16 and box_head=VGGBoxHead); the
  mask branch pools the same way at mask_output_size. box_head, mask_head: module
  factories, called as box_head(name="box_head")(x, train=); the predictors take the
  computation dtype. Training samples are `roi_targets`' (Fast R-CNN's paper: 64 or 128 per
  image, background_low=0.1 for background IoU in [0.1, 0.5)); the mask branch trains on
  the positive ones, at most batch_size_per_image * positive_fraction per image.
  smooth_l1_beta: the box loss's (torchvision's 1/9; Fast R-CNN's paper 1).
  aligned: RoI Align's samples (features and mask targets) half a pixel shifted, as
  Detectron2's ROIAlignV2; False is torchvision's, whose mask targets sit half a pixel from
  where its paste puts masks back: a ceiling of 0.33 mask AP on 16-64 pixel digits, 0.88
  aligned (the ground truth cropped and pasted back, 100 digit_scenes/multi test scenes).
  raw_outputs: evaluation stops before `postprocess` and returns `raw_detections`' inputs
  (to time the network apart from the decoding and NMS: benchmarks/lineage.py); no masks.
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
  smooth_l1_beta: float = 1.0 / 9
  score_thresh: float = 0.05
  nms_thresh: float = 0.5
  detections_per_img: int = 100
  mask_head: Callable[..., nn.Module] | None = None
  mask_predictor: Callable[..., nn.Module] | None = None
  mask_output_size: int = 14
  aligned: bool = False
  raw_outputs: bool = False
  dtype: Any = jnp.float32

  def postprocess_raw(self, raw: dict) -> dict:
    """`postprocess` with these heads' settings on raw outputs {"class_logits" [N, P, K],
    "box_regression" [N, P, 4K], "proposals" [N, P, 4], "proposal_valid" [N, P], "image_hw"
    [N, 2]} (what evaluation returns with raw_outputs). Needs no parameters: callable on an
    unbound RoIHeads."""
    return postprocess(
      raw["class_logits"],
      raw["box_regression"],
      raw["proposals"],
      raw["proposal_valid"],
      raw["image_hw"],
      score_thresh=self.score_thresh,
      nms_thresh=self.nms_thresh,
      detections_per_img=self.detections_per_img,
      weights=self.bbox_reg_weights,
    )

  def pool(self, features, boxes, image_shape, output_size=None):
    """RoI features [N, R, oh, ow, C] of boxes [N, R, 4] in the padded batch's pixels."""
    size = self.output_size if output_size is None else output_size
    if self.pooler not in _POOLERS:
      raise ValueError(f"RoIHeads: pooler must be one of {_POOLERS}, got {self.pooler!r}")
    if self.pooler == "roi_pool":
      maps = _maps(features, self.featmap_names, "RoIHeads")
      if len(maps) != 1:
        raise ValueError(f"RoIHeads: roi_pool pools one map, got {len(maps)}")
      return single_scale_roi_pool(
        maps[0], boxes, output_size=size, spatial_scale=self.spatial_scale
      )
    if self.pooler == "multiscale_roi_pool":
      return multiscale_roi_pool(
        features, boxes, image_shape, output_size=size, featmap_names=self.featmap_names
      )
    return multiscale_roi_align(
      features,
      boxes,
      image_shape,
      output_size=size,
      sampling_ratio=self.sampling_ratio,
      featmap_names=self.featmap_names,
      aligned=self.aligned,
    )

  def _mask_branch(self):
    if (self.mask_head is None) != (self.mask_predictor is None):
      raise ValueError("RoIHeads: give both mask_head and mask_predictor, or neither.")
    if self.mask_head is None:
      return None
    head = self.mask_head(name="mask_head")
    predictor = self.mask_predictor(self.num_classes, dtype=self.dtype, name="mask_predictor")
    return lambda x: predictor(head(x))

  def _mask_loss(self, branch, features, t, targets, image_shape) -> jax.Array:
    """Mask R-CNN's mask loss on the sampled positive RoIs (the first `p`: foreground
    comes first in roi_targets' samples)."""
    gt_masks = targets.get("masks")
    n, g = targets["boxes"].shape[:2]
    if gt_masks is None or gt_masks.ndim != 4 or gt_masks.shape[:2] != (n, g):
      raise ValueError(
        f"RoIHeads: the mask branch trains on targets['masks'] [N, G, H, W] = [{n}, {g}, H, W] "
        f"(DetectionTransform with masks); received "
        f"{None if gt_masks is None else tuple(gt_masks.shape)}."
      )
    p = max(int(self.batch_size_per_image * self.positive_fraction), 1)
    rois, labels = lax.stop_gradient(t.rois[:, :p]), t.labels[:, :p]
    m = 2 * self.mask_output_size  # the predictor doubles the pooled size
    project = functools.partial(masks_lib.project_masks_on_boxes, size=m, aligned=self.aligned)
    mask_targets = jax.vmap(project)(gt_masks, rois, t.matched_index[:, :p])
    logits = branch(self.pool(features, rois, image_shape, self.mask_output_size))
    return masks_lib.maskrcnn_loss(logits, labels, mask_targets, labels >= 1)

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
    "labels" [N, G] int >= 1, "valid" [N, G] bool, with a mask branch "masks" [N, G, H, W]};
    train samples with the "sample" rng, or with `keys`, one per image
    (`research.detection.rpn.image_keys`).

    Returns (detections, losses): in training (None, {"loss_classifier", "loss_box_reg"},
    and "loss_mask" with a mask branch), else (postprocess's dict, with a mask branch also
    "mask_probs" [N, D, M, M]: each detection's own-class mask probabilities in its box,
    M = 2 mask_output_size, zeros for padding; {}).
    """
    head = self.box_head(name="box_head")
    predictor = FastRCNNPredictor(self.num_classes, dtype=self.dtype, name="box_predictor")
    mask_branch = self._mask_branch()
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
      losses = fast_rcnn_loss(
        logits, regression, t.labels, t.deltas, t.valid, beta=self.smooth_l1_beta
      )
      if mask_branch is not None:
        losses["loss_mask"] = self._mask_loss(mask_branch, features, t, targets, image_shape)
      return None, losses
    if self.is_initializing():
      # The heads' parameters need the pooled features' shape only; pooling and postprocess
      # (batched NMS) have no parameters, and op by op they were most of an eager init.
      def zeros(size):
        pooled = jax.eval_shape(
          lambda f, p: self.pool(f, p, image_shape, size), features, proposals
        )
        return jnp.zeros(pooled.shape, pooled.dtype)

      predictor(head(zeros(self.output_size), train=False))
      if mask_branch is not None:
        mask_branch(zeros(self.mask_output_size))
      return {}, {}
    x = head(self.pool(features, proposals, image_shape), train=False)
    logits, regression = predictor(x)
    raw = {
      "class_logits": logits.reshape(*proposals.shape[:2], -1),
      "box_regression": regression.reshape(*proposals.shape[:2], -1),
      "proposals": proposals,
      "proposal_valid": proposal_valid,
      "image_hw": jnp.asarray(image_hw, jnp.float32),
    }
    if self.raw_outputs:
      return raw, {}
    detections = self.postprocess_raw(raw)
    if mask_branch is not None:
      # torchvision's maskrcnn_inference: the mask of each detection's own class.
      mask_logits = mask_branch(
        self.pool(features, detections["boxes"], image_shape, self.mask_output_size)
      )
      probs = masks_lib.mask_probabilities(mask_logits, detections["labels"])
      detections["mask_probs"] = jnp.where(detections["valid"][..., None, None], probs, 0)
    return detections, {}
