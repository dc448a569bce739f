"""RoI feature extraction (torchvision's poolers): each RoI's fixed-size features.

    multiscale_roi_align   RoI Align from the FPN level of each RoI (torchvision's
                           MultiScaleRoIAlign; Mask R-CNN's 7x7 box and 14x14 mask features)
    multiscale_roi_pool    RoI max pooling from the same levels (Mask R-CNN's RoIPool
                           ablation, Table 2c, on an FPN)
    single_scale_roi_pool  RoI max pooling on one map (Fast R-CNN: VGG-16's conv5_3, 1/16)
    roi_levels             torchvision's LevelMapper (FPN eq. 1)

Maps are NHWC, boxes [N, R, 4] (x1, y1, x2, y2) in the padded batch's pixels; outputs
[N, R, oh, ow, C]. The gradient reaches the features only: proposals are constants to the
heads (approximate joint training).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops import boxes as box_ops
from research.ops.conv import _pair
from research.ops.roi import roi_pool, roi_pool_levels
from research.ops.roi.align import _align_axis, _gather_sum


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


def _rois(boxes):
  """boxes [N, R, 4] -> rois [N * R, 5] (batch index, x1, y1, x2, y2), image by image."""
  n, r = boxes.shape[:2]
  image = jnp.repeat(jnp.arange(n, dtype=boxes.dtype), r)[:, None]
  return jnp.concatenate([image, boxes.reshape(n * r, 4)], axis=1)


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


@functools.partial(jax.jit, static_argnames=("out_hw", "scales", "ratio", "levels", "aligned"))
def _multiscale(maps, boxes, *, out_hw, scales, ratio, levels, aligned=False):
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
    ys, wy = _align_axis(b[:, 1], b[:, 3], oh, h, ratio, bound[0], aligned)
    xs, wx = _align_axis(b[:, 0], b[:, 2], ow, w, ratio, bound[1], aligned)
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
  aligned: bool = False,
) -> jax.Array:
  """torchvision's MultiScaleRoIAlign (aligned=False): each RoI pooled from its FPN level;
  aligned=True shifts the samples by half a pixel (Detectron2's ROIAlignV2).

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
    aligned=bool(aligned),
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
  out = roi_pool(feature, _rois(boxes), output_size, spatial_scale=spatial_scale)
  return out.reshape(n, r, *out.shape[1:])


def multiscale_roi_pool(
  features,
  boxes,
  image_hw,
  *,
  output_size=7,
  canonical_scale: int = 224,
  canonical_level: int = 4,
  featmap_names: Sequence[str] | None = None,
) -> jax.Array:
  """RoI max pooling (Fast R-CNN's quantized bins) from each RoI's FPN level, the level
  chosen as `multiscale_roi_align` chooses it: the RoIPool side of Mask R-CNN's ablation
  (Table 2c) on a pyramid. Arguments and result as `multiscale_roi_align`'s."""
  fn = "multiscale_roi_pool"
  maps = _maps(features, featmap_names, fn)
  n = maps[0].shape[0]
  boxes = _check_boxes(boxes, n, fn)
  if len(image_hw) != 2:
    raise ValueError(f"{fn}: image_hw must be a static (H, W) pair, got {image_hw!r}")
  image_hw = tuple(int(v) for v in image_hw)
  scales = [infer_scale(m.shape[1:3], image_hw) for m in maps]
  k_min, k_max = (int(-math.log2(s)) for s in (scales[0], scales[-1]))
  boxes = lax.stop_gradient(boxes)
  r = boxes.shape[1]
  level = roi_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
  # Each RoI from its own level in one lookup (research.ops.roi.roi_pool_levels).
  out = roi_pool_levels(maps, _rois(boxes), level.reshape(-1), output_size, spatial_scales=scales)
  return out.reshape(n, r, *out.shape[1:])
