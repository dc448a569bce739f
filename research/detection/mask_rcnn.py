"""Mask R-CNN (He et al. 2017): Faster R-CNN with RoI Align and a mask branch.

    images -> backbone (ResNet-FPN) -> rpn -> roi_heads: box head and predictor on 7x7
      RoI Align features, and the mask branch (research.detection.mask_head) on 14x14
      ones: four 3x3 convs, a 2x transposed conv, one 28x28 mask logit map per class

The model is research.detection.faster_rcnn.FasterRCNN with RoIHeads given a mask head
and predictor, as torchvision builds MaskRCNN on FasterRCNN. In training it takes the
instance masks ([N, G, H, W], `masks=`) and adds "loss_mask" (per-pixel binary
cross-entropy of each positive RoI's true-class map against its matched mask cropped by
RoI Align); in evaluation each detection carries "mask_probs" [N, D, 28, 28], the
sigmoid of its own class's map in its box, which `paste_masks_in_image` places in an
image (threshold 0.5 for COCO's segm AP: research.train.evaluators.DetectionAP).

Variants:
  MaskRCNN_ResNet50_FPN        torchvision's `maskrcnn_resnet50_fpn`: the Faster R-CNN
                               ResNet-50-FPN plus `roi_heads.mask_head` (MaskRCNNHeads,
                               four 256-channel convs) and `roi_heads.mask_predictor`
                               (conv5_mask, mask_fcn_logits), torchvision's names, so
                               research.convert.torchvision loads its weights.
  MaskRCNN_ResNet18_FPN_Scenes the :runlocal detector of digit scenes
                               (FasterRCNN_ResNet18_FPN_Scenes) with a 32-channel mask
                               branch and aligned RoI Align (Detectron2's ROIAlignV2).
  MaskRCNN_ResNet18_FPN_Scenes_RoIPool
                               the same with RoI max pooling (quantized bins) for its box
                               and mask features: the paper's RoIPool-against-RoIAlign
                               ablation (Table 2c).
"""

from __future__ import annotations

import functools

from research.detection import faster_rcnn
from research.detection.faster_rcnn import FasterRCNN
from research.detection.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from research.detection.roi_heads import RoIHeads

# torchvision's maskrcnn_resnet50_fpn: the box part is fasterrcnn_resnet50_fpn's.
MaskRCNN_ResNet50_FPN = functools.partial(
  FasterRCNN,
  backbone=faster_rcnn.ResNetFPN,
  roi_heads=functools.partial(RoIHeads, mask_head=MaskRCNNHeads, mask_predictor=MaskRCNNPredictor),
)

_SCENES = faster_rcnn.FasterRCNN_ResNet18_FPN_Scenes.keywords
# Four 3x3 convs of 32 channels: at 64 the branch was 3x the detector's step time (8 scenes
# x 32 positive RoIs x 14x14 x 64x64x9 MACs, 15 GFLOP forward), for masks of 16-64 pixels.
# RoI Align's samples at pixel centres (aligned, Detectron2's ROIAlignV2): torchvision's
# legacy half-pixel offset between mask targets and pasting caps the mask AP of these small
# digits at 0.33 even for perfect 28x28 masks (0.88 aligned; research.detection.roi_heads).
_SCENE_MASKS = dict(
  mask_head=functools.partial(MaskRCNNHeads, (32, 32, 32, 32)),
  mask_predictor=functools.partial(MaskRCNNPredictor, dim_reduced=32),
  aligned=True,
)

# The digit scenes' detector (128x128 scenes, objects of 16..64 pixels) with a mask branch.
MaskRCNN_ResNet18_FPN_Scenes = functools.partial(
  FasterRCNN,
  backbone=_SCENES["backbone"],
  rpn=_SCENES["rpn"],
  roi_heads=functools.partial(_SCENES["roi_heads"], **_SCENE_MASKS),
)

# Table 2c's RoIPool: the same detector whose box and mask features are max-pooled over
# quantized bins of each RoI's FPN level.
MaskRCNN_ResNet18_FPN_Scenes_RoIPool = functools.partial(
  FasterRCNN,
  backbone=_SCENES["backbone"],
  rpn=_SCENES["rpn"],
  roi_heads=functools.partial(_SCENES["roi_heads"], pooler="multiscale_roi_pool", **_SCENE_MASKS),
)
