"""Mask R-CNN's mask branch (He et al. 2017): head, predictor, targets, loss, pasting.

torchvision's split, with static shapes (a fixed number of mask RoIs per image and a
validity mask), so one compiled program serves any number of objects:

    MaskRCNNHeads           four 3x3 convs of 256 with ReLU on 14x14 RoI Align features
                            (names "0.0" .. "3.0": torchvision's `mask_head.0.0.weight`)
    MaskRCNNPredictor       conv5_mask (2x2 transposed conv, stride 2) -> ReLU ->
                            mask_fcn_logits (1x1): one 28x28 mask logit map per class
    project_masks_on_boxes  each RoI's ground-truth mask cropped and resized to M x M by
                            RoI Align on the mask (torchvision's numbers)
    maskrcnn_loss           per-pixel binary cross-entropy on the true class's map,
                            positive RoIs only, averaged over their pixels
    mask_probabilities      sigmoid of the predicted class's map per detection
    paste_masks_in_image    [D, M, M] probabilities -> [D, H, W] at their boxes
                            (torchvision's paste_masks_in_image: boxes widened by one
                            mask pixel each side, bilinear resize, host-side NumPy)

Masks are NHWC inside the model ([R, 28, 28, K] logits); the transposed conv's kernel is
stored as [2, 2, out, in], torch's [in, out, 2, 2] in the axis order the converter's conv
rule gives (research.convert.torchvision), so converted weights need no special case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.models.layers import Conv
from research.ops.roi.align import _align_axis

ModuleDef = Any

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), not
# truncated. Flax's fan_out of a [kh, kw, in, out] kernel is kh * kw * out, torch's too.
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_bias(fan_in: int):
  """torch's default bias of a conv or linear layer: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class MaskRCNNHeads(nn.Module):
  """x [..., 14, 14, C] -> [..., 14, 14, layers[-1]]: 3x3 convs (padding `dilation`) + ReLU.

  torchvision's `MaskRCNNHeads(in_channels, (256, 256, 256, 256), 1)`: Kaiming-normal
  (fan_out) weights and zero biases; any leading axes (images, RoIs) are folded into one.
  """

  layers: Sequence[int] = (256, 256, 256, 256)
  dilation: int = 1
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout or normalization
    lead, x = x.shape[:-3], x.reshape(-1, *x.shape[-3:]).astype(self.dtype)
    for i, features in enumerate(self.layers):
      conv = self.conv(
        features,
        (3, 3),
        padding=self.dilation,
        kernel_dilation=self.dilation,
        kernel_init=_KAIMING_FAN_OUT,
        bias_init=nn.initializers.zeros,
        dtype=self.dtype,
        name=f"{i}.0",
      )
      x = nn.relu(conv(x))
    return x.reshape(*lead, *x.shape[-3:])


class TransposedConv2x2(nn.Module):
  """torch's ConvTranspose2d(in, out, 2, stride=2): x [N, H, W, in] -> [N, 2H, 2W, out].

  With stride equal to the kernel the output pixels' windows do not overlap, so it is
  one matrix product per input pixel followed by a depth-to-space reshape:
  out[2i + a, 2j + b, o] = sum_c x[i, j, c] kernel[a, b, o, c] + bias[o].
  kernel [2, 2, out, in] (torch's weight [in, out, 2, 2] as the converter lays out a
  conv); initialization torchvision's for MaskRCNNPredictor: Kaiming normal (fan_out,
  which torch takes as in * 4 for a transposed conv) and torch's default bias.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    # Flax's fan_out of [2, 2, out, in] is 4 * in: torch's fan_out of [in, out, 2, 2].
    kernel = self.param("kernel", _KAIMING_FAN_OUT, (2, 2, self.features, c), jnp.float32)
    bias = self.param("bias", torch_bias(4 * self.features), (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    y = jnp.einsum("nijc,aboc->niajbo", x, kernel.astype(self.dtype))
    n, h, _, w, _, o = y.shape
    return y.reshape(n, 2 * h, 2 * w, o) + bias.astype(self.dtype)


class MaskRCNNPredictor(nn.Module):
  """x [..., 14, 14, C] -> mask logits [..., 28, 28, num_classes] (class 0: background).

  torchvision's `MaskRCNNPredictor(in_channels, dim_reduced, num_classes)`: conv5_mask,
  ReLU, mask_fcn_logits; Kaiming-normal (fan_out) weights, torch's default biases.
  """

  num_classes: int
  dim_reduced: int = 256
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    lead, x = x.shape[:-3], x.reshape(-1, *x.shape[-3:])
    x = nn.relu(TransposedConv2x2(self.dim_reduced, dtype=self.dtype, name="conv5_mask")(x))
    logits = self.conv(
      self.num_classes,
      (1, 1),
      kernel_init=_KAIMING_FAN_OUT,
      bias_init=torch_bias(self.dim_reduced),
      dtype=self.dtype,
      name="mask_fcn_logits",
    )(x)
    return logits.reshape(*lead, *logits.shape[-3:])


# --------------------------------------------------------------------------- targets, loss


def _axis_weights(lo, hi, out: int, size: int, aligned: bool) -> jax.Array:
  """RoI Align along one axis as a matrix: [R, out, size], row o holding the weights with
  which bin o averages the axis' pixels (adaptive sampling, spatial scale 1)."""
  bound = -(-size // out)  # ceil(size / out) samples: enough for a box inside the map
  rows, weights = _align_axis(lo, hi, out, size, 0, bound, aligned)  # [R, out, T]
  onehot = rows[..., None] == jnp.arange(size, dtype=rows.dtype)  # [R, out, T, size]
  return jnp.einsum("rot,rots->ros", weights, onehot.astype(weights.dtype))


def project_masks_on_boxes(
  gt_masks, boxes, matched_index, size: int, *, aligned: bool = False
) -> jax.Array:
  """Mask targets of one image (torchvision's `project_masks_on_boxes`).

  gt_masks: [G, H, W] (0/1, any dtype) the image's instance masks in its canvas pixels;
  boxes: [R, 4] (x1, y1, x2, y2) the RoIs in the same pixels; matched_index: [R] int,
  each RoI's ground-truth index; size: M, static. Returns [R, M, M] float32: each RoI's
  matched mask under RoI Align (M x M, spatial scale 1, adaptive sampling), fractional at
  the mask's edges as torchvision's targets are. aligned=False is torchvision's (pixel
  centres at integer coordinates, half a pixel from where `paste_masks_in_image` puts
  them back); aligned=True is Detectron2's ROIAlignV2 (centres at +0.5), whose targets
  pasted back land on the mask they came from. No gradient: targets are constants.

  RoI Align's bilinear samples, their validity and their average are products of a row
  and a column factor, so each target is Y [M, H] @ mask [H, W] @ X [W, M]: two matrix
  products instead of gathering M x M x samples^2 x 4 single pixels.
  """
  gt_masks = jnp.asarray(gt_masks)
  if gt_masks.ndim != 3:
    raise ValueError(f"project_masks_on_boxes: gt_masks must be [G, H, W], got {gt_masks.shape}")
  g, h, w = gt_masks.shape
  boxes = lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
  index = jnp.clip(jnp.asarray(matched_index, jnp.int32), 0, max(g - 1, 0))
  rows = _axis_weights(boxes[:, 1], boxes[:, 3], size, h, aligned)  # [R, M, H]
  cols = _axis_weights(boxes[:, 0], boxes[:, 2], size, w, aligned)  # [R, M, W]
  masks = gt_masks.astype(jnp.float32)[index]  # [R, H, W]
  out = jnp.einsum("rmh,rhw,rnw->rmn", rows, masks, cols, precision=lax.Precision.HIGHEST)
  return lax.stop_gradient(out)


def maskrcnn_loss(mask_logits, labels, mask_targets, valid) -> jax.Array:
  """torchvision's maskrcnn_loss with static shapes.

  mask_logits: [..., M, M, K]; labels: [...] int, each RoI's class (>= 1); mask_targets:
  [..., M, M] in [0, 1]; valid: [...] bool, the positive RoIs. The binary cross-entropy
  (with logits) of each valid RoI's true-class map against its target, averaged over
  all valid RoIs' pixels of the batch; 0 (not NaN) without any valid RoI.
  """
  lead = mask_logits.shape[:-3]
  if labels.shape != lead or valid.shape != lead or mask_targets.shape != mask_logits.shape[:-1]:
    raise ValueError(
      f"maskrcnn_loss: mask_logits {mask_logits.shape} needs labels and valid {lead} and "
      f"mask_targets {mask_logits.shape[:-1]}; got {labels.shape}, {valid.shape}, "
      f"{mask_targets.shape}"
    )
  labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  x = jnp.take_along_axis(mask_logits.astype(jnp.float32), labels[..., None, None, None], axis=-1)[
    ..., 0
  ]
  z = mask_targets.astype(jnp.float32)
  # log(1 + e^x) - x z, written stably (torch's binary_cross_entropy_with_logits).
  bce = jnp.maximum(x, 0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))
  pixels = mask_logits.shape[-3] * mask_logits.shape[-2]
  count = jnp.maximum(valid.sum(), 1).astype(jnp.float32) * pixels
  return jnp.where(valid[..., None, None], bce, 0).sum() / count


def mask_probabilities(mask_logits, labels) -> jax.Array:
  """mask_logits [..., M, M, K], labels [...] int (>= 1 with the background at 0) ->
  [..., M, M] sigmoid of each detection's own class map (torchvision's maskrcnn_inference)."""
  labels = jnp.asarray(labels, jnp.int32)[..., None, None, None]
  x = jnp.take_along_axis(mask_logits.astype(jnp.float32), labels, axis=-1)[..., 0]
  return jax.nn.sigmoid(x)


# --------------------------------------------------------------------------- pasting


def _resize_taps(start: np.ndarray, length: np.ndarray, image: int, size: int) -> np.ndarray:
  """[D, image, size] float32 weights: image pixel i of detection d reads the size-long
  mask resized to `length` pixels placed at `start` (torch's bilinear resize,
  align_corners=False: source (t + 0.5) * size / length - 0.5 clamped at 0), zero
  outside [start, start + length)."""
  t = np.arange(image, dtype=np.int64)[None, :] - start[:, None]  # position inside the box
  inside = (t >= 0) & (t < length[:, None])
  scale = (np.float32(size) / length.astype(np.float32))[:, None]
  src = np.maximum((t.astype(np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
  low = np.floor(src).astype(np.int64)
  frac = src - low
  low = np.minimum(low, size - 1)
  high = np.minimum(low + 1, size - 1)
  taps = np.zeros((*t.shape, size), np.float32)
  d, i = np.nonzero(inside)
  np.add.at(taps, (d, i, low[d, i]), 1 - frac[d, i])
  np.add.at(taps, (d, i, high[d, i]), frac[d, i])
  return taps


def paste_masks_in_image(masks, boxes, image_hw: Sequence[int], padding: int = 1) -> np.ndarray:
  """torchvision's paste_masks_in_image, on the host: each detection's M x M mask
  probabilities placed at its box in an image of `image_hw`.

  masks: [D, M, M] probabilities; boxes: [D, 4] (x1, y1, x2, y2) in that image's pixels;
  image_hw: (H, W). The mask gets `padding` zero pixels each side and its box widens by
  (M + 2 padding) / M about its centre, then integer corners (truncated), a bilinear
  resize to the box's (y2 - y1 + 1, x2 - x1 + 1) pixels and the part inside the image.
  Returns [D, H, W] float32; threshold at 0.5 for binary masks (COCO's evaluation).
  """
  masks = np.asarray(masks, np.float32)
  boxes = np.asarray(boxes, np.float32)
  if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
    raise ValueError(f"paste_masks_in_image: masks must be [D, M, M], got {masks.shape}")
  if boxes.shape != (masks.shape[0], 4):
    raise ValueError(
      f"paste_masks_in_image: boxes must be [{masks.shape[0]}, 4], got {boxes.shape}"
    )
  h, w = (int(v) for v in image_hw)
  m = masks.shape[1]
  masks = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
  scale = np.float32((m + 2 * padding) / m)
  half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale
  centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
  corners = np.trunc(np.concatenate([centre - half, centre + half], axis=1)).astype(np.int64)
  size = masks.shape[1]
  length = np.maximum(corners[:, 2:] - corners[:, :2] + 1, 1)  # (w, h)
  rows = _resize_taps(corners[:, 1], length[:, 1], h, size)  # [D, H, S]
  cols = _resize_taps(corners[:, 0], length[:, 0], w, size)  # [D, W, S]
  return np.einsum("dis,dst,djt->dij", rows, masks, cols, optimize=True).astype(np.float32)
