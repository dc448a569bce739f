"""Faster R-CNN (Ren et al. 2015): backbone -> RPN -> RoI heads, one Flax module.

    images [N, H, W, 3] (normalized, padded) -> backbone feature maps
      -> rpn (research.detection.rpn): proposals [N, P, 4] with a validity mask
      -> roi_heads (research.detection.roi_heads): per-RoI class scores and deltas
      -> in training the two losses of each; in evaluation postprocessed detections

Training is the paper's approximate joint training, as torchvision's: no gradient flows
through the proposals' coordinates. Every shape is static (proposals, sampled anchors and
RoIs, detections are padded with validity masks), so one compilation serves a whole run
whatever the number of objects in an image, none included.

Classes: `num_classes` counts the data set's object classes; labels in and out are the
data set's 0-based ids. Inside, as in torchvision, class 0 is the background, so the
predictor has num_classes + 1 outputs (torchvision's COCO detector: num_classes=90).

Variants:
  FasterRCNN_ResNet50_FPN   torchvision's `fasterrcnn_resnet50_fpn`: ResNet-50 with frozen
                            batch norm, FPN P2..P6 of 256 channels, one anchor size per
                            level (32..512) and three ratios, multi-scale RoI Align 7x7,
                            TwoMLPHead of 1024. Its module names are torchvision's
                            ("backbone.body.layer1.0.conv1", "rpn.head.conv.0.0",
                            "roi_heads.box_head.fc6"), so `research.convert.torchvision`
                            loads torchvision's weights and `config.init` its checkpoint.
  FasterRCNN_VGG16          the paper's: VGG-16's conv5_3 at stride 16, 9 anchors (areas
                            128^2, 256^2, 512^2; ratios 1:2, 1:1, 2:1), RoI pooling 7x7,
                            VGG's fc6/fc7 as the box head; 12,000 / 6,000 proposals before
                            NMS and 2,000 / 300 after, in training / at test; anchors that
                            cross the image border left out of the RPN's loss; the backbone
                            under "backbone.body" ("backbone.body.features.0" <- VGG's
                            "features.0"), the box head under "roi_heads.box_head"
                            ("classifier.0", "classifier.3" <- VGG's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.detection import rpn as rpn_lib
from research.detection.roi_heads import RoIHeads, TwoMLPHead, VGGBoxHead
from research.models import resnet, vgg
from research.models.fpn import FeaturePyramidNetwork
from research.models.norms import FrozenBatchNorm

ModuleDef = Any


class ResNetFPN(nn.Module):
  """torchvision's `BackboneWithFPN` over a ResNet: images [N, H, W, 3] ->
  {"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}, each [N, H / s, W / s, 256] (s = 4 ..
  64, rounded up). `body` is the ResNet without its head, `fpn` the pyramid."""

  resnet: Callable[..., nn.Module] = resnet.ResNet50
  norm: ModuleDef = FrozenBatchNorm
  out_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    body = self.resnet(num_classes=0, norm=self.norm, dtype=self.dtype, name="body")
    _, out = body(images, train=train)
    stages = [out[f"stage{i}"] for i in range(1, 5)]
    fpn = FeaturePyramidNetwork(
      [s.shape[-1] for s in stages], self.out_channels, dtype=self.dtype, name="fpn"
    )
    return fpn({str(i): s for i, s in enumerate(stages)}, train=train)


class VGGConv5(nn.Module):
  """VGG-16's convolutions as the paper's backbone: images [N, H, W, 3] -> {"0": conv5_3
  after its ReLU [N, H / 16, W / 16, 512]}; `body` is torchvision's `features` layout."""

  vgg: Callable[..., nn.Module] = vgg.VGG16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    _, out = self.vgg(num_classes=0, dtype=self.dtype, name="body")(images, train=train)
    return {"0": out["relu5_3"]}


def _check_inputs(images, image_size, boxes, labels, valid, train: bool, name: str) -> None:
  shape = tuple(np.shape(images))
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(
      f"{name}: images must be [N, H, W, 3] (normalized, padded); received shape {shape}."
    )
  n = shape[0]
  if image_size is not None and tuple(np.shape(image_size)) != (n, 2):
    raise ValueError(
      f"{name}: image_size must be [N, 2] = [{n}, 2] (h, w of each image inside the padded "
      f"batch); received shape {tuple(np.shape(image_size))}."
    )
  if not train:
    return
  if boxes is None or labels is None or valid is None:
    raise ValueError(
      f"{name}: training needs boxes [N, G, 4], labels [N, G] and valid [N, G] (a detection "
      "batch of research.data.detection.DetectionTransform)."
    )
  g = np.shape(boxes)[1] if np.ndim(boxes) == 3 else None
  for value, expected, key in ((boxes, (n, g, 4), "boxes"), (labels, (n, g), "labels")):
    if tuple(np.shape(value)) != expected or g is None:
      raise ValueError(
        f"{name}: {key} must be {list(expected)} (padded ground truth); received shape "
        f"{tuple(np.shape(value))}."
      )
  if tuple(np.shape(valid)) != (n, g):
    raise ValueError(f"{name}: valid must be [{n}, {g}] bool; received {np.shape(valid)}.")


class FasterRCNN(nn.Module):
  """`__call__(images, image_size=None, boxes=None, labels=None, valid=None,
  example_index=None, masks=None, *, train=False)`.

  images: [N, H, W, 3], normalized and padded (research.data.detection.DetectionTransform);
  image_size: [N, 2] (h, w) of each image inside the padding (None: all of H, W);
  in training boxes [N, G, 4] (x1, y1, x2, y2) pixels, labels [N, G] 0-based class ids,
  valid [N, G] bool; example_index [N]: each image's position in the global batch, so
  that each image's anchor and RoI samples are drawn from its own key
  (`research.train.steps.example_keys`) and are the same on one device and many; masks
  [N, G, H, W] 0/1 instance masks in the images' pixels, which a mask branch trains on
  (research.detection.mask_rcnn).

  Returns in training (losses {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
  "loss_box_reg"}, with a mask branch also "loss_mask"; out); in evaluation (detections
  {"boxes" [N, D, 4], "scores" [N, D], "labels" [N, D] 0-based, "valid" [N, D], with a
  mask branch also "mask_probs" [N, D, 28, 28]}, out), out holding the proposals and the
  RPN's objectness [N, T], deltas [N, T, 4] and anchors [T, 4].
  """

  num_classes: int
  backbone: Callable[..., nn.Module] = ResNetFPN
  rpn: Callable[..., nn.Module] = rpn_lib.RPN
  roi_heads: Callable[..., nn.Module] = RoIHeads
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    images,
    image_size=None,
    boxes=None,
    labels=None,
    valid=None,
    example_index=None,
    masks=None,
    *,
    train: bool = False,
  ):
    name = type(self).__name__
    if self.num_classes < 1:
      raise ValueError(f"{name}: num_classes must be >= 1 object classes; got {self.num_classes}.")
    _check_inputs(images, image_size, boxes, labels, valid, train, name)
    n, h, w, _ = images.shape
    if image_size is None:
      image_size = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (n, 2))
    image_size = jnp.asarray(image_size, jnp.float32)
    features = self.backbone(dtype=self.dtype, name="backbone")(images, train=train)
    rpn_keys = roi_keys = None
    if train and example_index is not None:
      from research.train.steps import example_keys  # pylint: disable=import-outside-toplevel

      keys = example_keys(self.make_rng("sample"), example_index)
      rpn_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 0)
      roi_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
    gt_valid = None if valid is None else jnp.asarray(valid, bool)
    proposals, rpn_losses, rpn_out = self.rpn(dtype=self.dtype, name="rpn")(
      list(features.values()),
      image_size,
      boxes,
      gt_valid,
      image_shape_hw=(h, w),
      train=train,
      keys=rpn_keys,
    )
    targets = None
    if train:
      # torchvision's convention inside: 0 is the background.
      targets = {"boxes": boxes, "labels": jnp.asarray(labels, jnp.int32) + 1, "valid": gt_valid}
      if masks is not None:
        targets["masks"] = jnp.asarray(masks)
    heads = self.roi_heads(num_classes=self.num_classes + 1, dtype=self.dtype, name="roi_heads")
    detections, roi_losses = heads(
      features,
      proposals["boxes"],
      proposals["valid"],
      image_size,
      image_shape=(h, w),
      targets=targets,
      train=train,
      keys=roi_keys,
    )
    out = {**rpn_out, "proposals": proposals}
    if train:
      return {**rpn_losses, **roi_losses}, out
    if self.is_initializing():  # the heads skipped their parameter-free postprocessing
      return detections, out
    if "labels" in detections:  # not with the heads' raw_outputs
      detections = {**detections, "labels": detections["labels"] - 1}
    return detections, out


FasterRCNN_ResNet50_FPN = functools.partial(FasterRCNN, backbone=ResNetFPN)

# The paper's VGG-16 detector (Section 3.3 and 4.1).
FasterRCNN_VGG16 = functools.partial(
  FasterRCNN,
  backbone=VGGConv5,
  rpn=functools.partial(
    rpn_lib.RPN,
    anchor_sizes=((128, 256, 512),),
    pre_nms_top_n_train=12000,
    pre_nms_top_n_test=6000,
    post_nms_top_n_train=2000,
    post_nms_top_n_test=300,
    # "During training, we ignore all cross-boundary anchors" (Section 3.3).
    allowed_border=0.0,
  ),
  roi_heads=functools.partial(
    RoIHeads,
    box_head=VGGBoxHead,
    pooler="roi_pool",
    featmap_names=("0",),
    spatial_scale=1 / 16,
    batch_size_per_image=128,
    nms_thresh=0.3,
  ),
)

# Scenes of 128x128 with objects of 16..64 pixels (digit_scenes/multi, the :runlocal
# experiments): ResNet-18 at a quarter width (resnet18_imagenet:runlocal's classifier, so
# its checkpoint initializes "backbone/body") with batch norm that trains (batches of
# several scenes estimate statistics well, unlike torchvision's one or two photographs),
# an FPN of 64 channels, anchors of 16..256 pixels, fewer proposals and a smaller box head.
SCENES_BACKBONE = functools.partial(
  ResNetFPN,
  resnet=functools.partial(resnet.ResNet18, num_filters=16),
  norm=None,
  out_channels=64,
)
FasterRCNN_ResNet18_FPN_Scenes = functools.partial(
  FasterRCNN,
  backbone=SCENES_BACKBONE,
  rpn=functools.partial(
    rpn_lib.RPN,
    anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
    pre_nms_top_n_train=1000,
    post_nms_top_n_train=500,
    pre_nms_top_n_test=500,
    post_nms_top_n_test=300,
  ),
  roi_heads=functools.partial(
    RoIHeads,
    box_head=functools.partial(TwoMLPHead, 256),
    batch_size_per_image=128,
    detections_per_img=50,
  ),
)


def detection_loss(outputs, batch) -> dict:
  """The task's loss: the sum of the four losses, each also reported.
  outputs: (losses, out) of a FasterRCNN in training."""
  losses, _ = outputs
  losses = {k: v.astype(jnp.float32) for k, v in losses.items()}
  return {"loss": sum(losses.values()), **losses}
