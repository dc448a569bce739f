"""Fast R-CNN (Girshick 2015): the whole image through the convolutions once, each region
proposal max-pooled from the feature map, fc layers, two sibling outputs.

    images [N, H, W, 3] -> backbone feature maps
    proposals [N, P, 4] (selective search, research.data.proposals) -> RoI max pooling
      -> box head (fc6, fc7) -> class scores (K + 1) and per-class box deltas (4 (K + 1))
      -> in training the multi-task loss, in evaluation per-class NMS'd detections

The heads are research.detection.roi_heads.RoIHeads, the ones Faster R-CNN uses (which is
Fast R-CNN's detector behind a learned RPN), with the paper's settings (Section 2.3):
hierarchical sampling of 64 RoIs per image, 25% foreground (IoU >= 0.5) and background
in [0.1, 0.5); the loss L = L_cls + [u >= 1] L_loc with smooth L1 (beta 1) on targets
normalized by (0.1, 0.1, 0.2, 0.2) (the weights (10, 10, 5, 5)); NMS 0.3 per class at test.
As in the authors' code, the ground-truth boxes join the proposals in training.

Classes: `num_classes` counts the data set's object classes; labels in and out are
0-based; inside, class 0 is the background.

Variants:
  FastRCNN_VGG16                 the paper's VGG-16 detector: conv5_3 at stride 16, RoI
                                 max pooling 7x7, VGG's fc6/fc7 (dropout) as the box head
                                 (names "backbone.body.features.*", "roi_heads.box_head.
                                 classifier.0/3", so ImageNet VGG-16 initializes both).
  FastRCNN_ResNet18_FPN_Scenes   the digit scenes' detector: Faster R-CNN :runlocal's
                                 backbone (ResNet-18 at a quarter width, FPN of 64
                                 channels) and box head, RoI max pooling 7x7 from the
                                 pyramid level of each proposal's size: the lineage
                                 table's Fast and Faster R-CNN differ in their proposals.

`truncated_svd` and `factor_layers` (Section 3.1) factor a trained head's fc layers for
detection: build the same detector with the box head's `svd_ranks` and pass it
`factor_layers(params, {"roi_heads/box_head/fc6": t6, "roi_heads/box_head/fc7": t7})`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.detection.faster_rcnn import SCENES_BACKBONE, VGGConv5, _check_inputs
from research.detection.roi_heads import RoIHeads, TwoMLPHead, VGGBoxHead


def _check_proposals(proposals, proposal_valid, n: int, name: str) -> None:
  p = np.shape(proposals)
  if len(p) != 3 or p[0] != n or p[2] != 4:
    raise ValueError(
      f"{name}: proposals must be [N, P, 4] = [{n}, P, 4] (x1, y1, x2, y2) in the batch's "
      f"pixels (DetectionTransform of records with 'proposals'); received shape {p}."
    )
  if tuple(np.shape(proposal_valid)) != p[:2]:
    raise ValueError(
      f"{name}: proposal_valid must be [N, P] = {list(p[:2])} bool; received shape "
      f"{tuple(np.shape(proposal_valid))}."
    )


class FastRCNN(nn.Module):
  """`__call__(images, proposals, proposal_valid, image_size=None, boxes=None, labels=None,
  valid=None, example_index=None, *, train=False)`.

  images: [N, H, W, 3] normalized and padded; proposals: [N, P, 4] (x1, y1, x2, y2) in the
  images' pixels with proposal_valid [N, P] bool; image_size: [N, 2] (h, w) inside the
  padding; in training boxes [N, G, 4], labels [N, G] 0-based, valid [N, G] and
  example_index [N] (each image's RoI sample from its own key,
  `research.train.steps.example_keys`).

  Returns in training ({"loss_classifier", "loss_box_reg"}, out); in evaluation
  (detections {"boxes" [N, D, 4], "scores" [N, D], "labels" [N, D] 0-based, "valid"
  [N, D]}, out); out holds the proposals.
  """

  num_classes: int
  backbone: Callable[..., nn.Module] = VGGConv5
  roi_heads: Callable[..., nn.Module] = functools.partial(
    RoIHeads,
    box_head=VGGBoxHead,
    pooler="roi_pool",
    featmap_names=("0",),
    spatial_scale=1 / 16,
    batch_size_per_image=64,
    background_low=0.1,
    smooth_l1_beta=1.0,
    nms_thresh=0.3,
  )
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    images,
    proposals=None,
    proposal_valid=None,
    image_size=None,
    boxes=None,
    labels=None,
    valid=None,
    example_index=None,
    *,
    train: bool = False,
  ):
    name = type(self).__name__
    if self.num_classes < 1:
      raise ValueError(f"{name}: num_classes must be >= 1 object classes; got {self.num_classes}.")
    _check_inputs(images, image_size, boxes, labels, valid, train, name)
    n, h, w, _ = images.shape
    if proposals is None and proposal_valid is None and self.is_initializing():
      # Parameters do not depend on the proposals: init may pass the images alone.
      proposals, proposal_valid = jnp.zeros((n, 1, 4)), jnp.zeros((n, 1), bool)
    if proposals is None or proposal_valid is None:
      raise ValueError(
        f"{name}: needs proposals [N, P, 4] and proposal_valid [N, P] (records with "
        "'proposals': config.proposals, research.data.proposals)."
      )
    _check_proposals(proposals, proposal_valid, n, name)
    if image_size is None:
      image_size = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (n, 2))
    image_size = jnp.asarray(image_size, jnp.float32)
    features = self.backbone(dtype=self.dtype, name="backbone")(images, train=train)
    keys = targets = None
    if train:
      if example_index is not None:
        from research.train.steps import example_keys  # pylint: disable=import-outside-toplevel

        keys = example_keys(self.make_rng("sample"), example_index)
      targets = {
        "boxes": boxes,
        "labels": jnp.asarray(labels, jnp.int32) + 1,  # 0 is the background inside
        "valid": jnp.asarray(valid, bool),
      }
    proposals = jnp.asarray(proposals, jnp.float32)
    heads = self.roi_heads(num_classes=self.num_classes + 1, dtype=self.dtype, name="roi_heads")
    detections, losses = heads(
      features,
      proposals,
      jnp.asarray(proposal_valid, bool),
      image_size,
      image_shape=(h, w),
      targets=targets,
      train=train,
      keys=keys,
    )
    out = {"proposals": {"boxes": proposals, "valid": proposal_valid}}
    if train:
      return losses, out
    if self.is_initializing():
      return detections, out
    if "labels" not in detections:  # the heads' raw_outputs: nothing to relabel
      return detections, out
    return {**detections, "labels": detections["labels"] - 1}, out


FastRCNN_VGG16 = FastRCNN

FastRCNN_ResNet18_FPN_Scenes = functools.partial(
  FastRCNN,
  backbone=SCENES_BACKBONE,  # Faster R-CNN :runlocal's, so the lineage compares proposals
  roi_heads=functools.partial(
    RoIHeads,
    box_head=functools.partial(TwoMLPHead, 256),
    pooler="multiscale_roi_pool",
    batch_size_per_image=64,
    background_low=0.1,
    smooth_l1_beta=1.0,
    nms_thresh=0.3,
    detections_per_img=50,
  ),
)


def truncated_svd(kernel: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """Section 3.1: a fully connected layer's kernel [u, v] (y = x W) -> (first [u, t],
  second [t, v]) with t = rank, W ~ first @ second = U_t (Sigma_t V_t^T), the best rank-t
  approximation; one layer of u v weights becomes two of t (u + v)."""
  u, s, vt = jnp.linalg.svd(jnp.asarray(kernel, jnp.float32), full_matrices=False)
  if not 1 <= rank <= s.shape[0]:
    raise ValueError(
      f"truncated_svd: rank must be in [1, {s.shape[0]}] for a kernel of shape "
      f"{tuple(np.shape(kernel))}; received {rank}."
    )
  return u[:, :rank], s[:rank, None] * vt[:rank]


def factor_layers(params: dict, ranks: dict[str, int]) -> dict:
  """A trained detector's params with the fc layers in `ranks` factored by `truncated_svd`.

  params: the detector's "params" tree; ranks: {layer path ("roi_heads/box_head/fc6"):
  rank}. Returns params for the same detector built with the head's `svd_ranks` set to
  these ranks: "{layer}_svd" holds the first factor, "{layer}" the second and the bias.
  """
  params = jax.tree.map(lambda x: x, params)  # a copy: the caller's tree is left as it is
  for path, rank in ranks.items():
    *parents, name = path.split("/")
    node = params
    for key in parents:
      if key not in node:
        raise ValueError(f"factor_layers: no layer {path!r} in the params (at {key!r}).")
      node = node[key]
    if name not in node or "kernel" not in node[name]:
      raise ValueError(
        f"factor_layers: no dense layer {path!r} in the params; found {sorted(node)}."
      )
    first, second = truncated_svd(node[name]["kernel"], rank)
    node[f"{name}_svd"] = {"kernel": first}
    node[name] = {**node[name], "kernel": second}
  return params


_SVD_LAYERS = {TwoMLPHead: ("fc6", "fc7"), VGGBoxHead: ("classifier.0", "classifier.3")}


def with_svd(model: FastRCNN, params: dict, ranks: tuple[int, int]) -> tuple[FastRCNN, dict]:
  """Section 3.1 on a trained detector: (the same detector with its box head's fc6 and fc7
  factored at `ranks` (None: that layer kept whole), its params through `factor_layers`).
  The box head must be a
  `TwoMLPHead` or `VGGBoxHead` given to `roi_heads` as `box_head`."""
  heads = model.roi_heads
  box_head = getattr(heads, "keywords", {}).get("box_head")
  kind = getattr(box_head, "func", box_head)
  if kind not in _SVD_LAYERS:
    raise ValueError(
      f"with_svd: the model's roi_heads need a box_head in {[k.__name__ for k in _SVD_LAYERS]}; "
      f"received {getattr(kind, '__name__', kind)!r}."
    )
  factored = model.clone(
    roi_heads=functools.partial(heads, box_head=functools.partial(box_head, svd_ranks=ranks))
  )
  names = _SVD_LAYERS[kind]
  layers = {f"roi_heads/box_head/{n}": r for n, r in zip(names, ranks, strict=True) if r}
  return factored, factor_layers(params, layers)
