"""Anchors: reference boxes at every feature-map position (Faster R-CNN, Ren et al. 2015).

Faster R-CNN's RPN predicts, at each position of a stride-16 feature map, k = 9
boxes relative to anchors of areas 128^2, 256^2 and 512^2 and aspect ratios
1:2, 1:1 and 2:1; these are the defaults here. Aspect ratio means height / width.

The numbers and order are exactly torchvision's `AnchorGenerator`: per cell the
anchors run ratio-major (for each ratio, each size), coordinates rounded to
integers; over the map position-major (row by row, then the cell's anchors), and
the anchors of a cell are centred on its top-left corner (x * stride, y * stride),
not on its centre. The flat index of the anchor for (row y, column x, anchor a)
is (y * W + x) * A + a, which is the layout of a `[H, W, A * 4]` conv output
reshaped to `[H * W * A, 4]`.

Anchors depend only on static shapes, so they are built with numpy on the host
and enter a compiled function as a constant.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cell_anchors", "anchors", "multilevel_anchors", "inside_image"]

# Faster R-CNN (VGG16 conv5_3, stride 16): 3 scales x 3 aspect ratios.
SIZES = (128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
STRIDE = 16


def _positive_numbers(values, name: str, fn: str) -> tuple:
  if isinstance(values, numbers.Real):
    values = (values,)
  ok = isinstance(values, Sequence) and len(values) > 0
  ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
  # `v > 0` is False for NaN too.
  if not ok or not all(v > 0 for v in values):
    raise ValueError(
      f"{fn}: {name} must be a non-empty sequence of positive numbers, got {values!r}"
    )
  return tuple(values)


def _positive_pair(value, name: str, fn: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, numbers.Integral) else value
  if isinstance(pair, np.ndarray):  # e.g. a shape as an array
    pair = tuple(pair.tolist())
  ok = isinstance(pair, Sequence) and len(pair) == 2
  if not ok or not all(
    isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in pair
  ):
    raise ValueError(f"{fn}: {name} must be a positive int or a pair of them, got {value!r}")
  return int(pair[0]), int(pair[1])


def cell_anchors(sizes=SIZES, aspect_ratios=ASPECT_RATIOS) -> np.ndarray:
  """The anchors of one cell, centred on (0, 0): torchvision's `AnchorGenerator.generate_anchors`.

  sizes: [S] positive, the square root of the anchor area (128 for 128^2);
  aspect_ratios: [R] positive, height / width.
  Returns [R * S, 4] float32 (x1, y1, x2, y2), ratio-major, rounded to integers.
  """
  fn = "cell_anchors"
  scales = np.asarray(_positive_numbers(sizes, "sizes", fn), np.float32)
  ratios = np.asarray(_positive_numbers(aspect_ratios, "aspect_ratios", fn), np.float32)
  # float32 step by step as torchvision computes it, so the rounding agrees bit for bit.
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  # np.round, like torch.round, rounds halves to even.
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))


def anchors(
  feature_shape_hw, stride=STRIDE, sizes=SIZES, aspect_ratios=ASPECT_RATIOS
) -> np.ndarray:
  """All anchors of one feature map: torchvision's `AnchorGenerator.grid_anchors` for one level.

  feature_shape_hw: (H, W) of the feature map; stride: int or (stride_y, stride_x),
  image pixels per feature cell; sizes, aspect_ratios: as `cell_anchors`.
  Returns [H * W * A, 4] float32 (x1, y1, x2, y2), A = len(sizes) * len(aspect_ratios),
  index (y * W + x) * A + a.
  """
  fn = "anchors"
  height, width = _positive_pair(feature_shape_hw, "feature_shape_hw", fn)
  stride_y, stride_x = _positive_pair(stride, "stride", fn)
  base = cell_anchors(sizes, aspect_ratios)
  shift_y, shift_x = np.meshgrid(
    np.arange(height, dtype=np.float32) * stride_y,
    np.arange(width, dtype=np.float32) * stride_x,
    indexing="ij",
  )
  shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4)


def multilevel_anchors(
  image_shape_hw,
  feature_shapes_hw,
  sizes=((32,), (64,), (128,), (256,), (512,)),
  aspect_ratios=ASPECT_RATIOS,
) -> np.ndarray:
  """Anchors of several feature maps (FPN), concatenated: torchvision's `AnchorGenerator.forward`.

  image_shape_hw: (H, W) of the (padded) input image; feature_shapes_hw: [L] of (H_l, W_l);
  sizes: [L] sequences of sizes, one per level (default: torchvision's FPN, one size
  per level); aspect_ratios: one sequence for every level, or [L] of them.
  Level l's stride is image // feature per axis, as torchvision computes it.
  Returns [sum_l H_l * W_l * A_l, 4] float32, level by level.
  """
  fn = "multilevel_anchors"
  image_h, image_w = _positive_pair(image_shape_hw, "image_shape_hw", fn)
  levels = list(feature_shapes_hw)
  if not levels:
    raise ValueError(f"{fn}: feature_shapes_hw must name at least one level, got {levels!r}")
  if len(aspect_ratios) > 0 and isinstance(aspect_ratios[0], numbers.Real):
    aspect_ratios = (aspect_ratios,) * len(levels)
  if len(sizes) != len(levels) or len(aspect_ratios) != len(levels):
    raise ValueError(
      f"{fn}: sizes and aspect_ratios must have one entry per level ({len(levels)} feature "
      f"maps), got {len(sizes)} sizes and {len(aspect_ratios)} aspect_ratios"
    )
  out = []
  for level, s, r in zip(levels, sizes, aspect_ratios):
    h, w = _positive_pair(level, "feature_shapes_hw", fn)
    if h > image_h or w > image_w:
      raise ValueError(
        f"{fn}: feature_shapes_hw must not exceed image_shape_hw {(image_h, image_w)}, got {(h, w)}"
      )
    out.append(anchors((h, w), (image_h // h, image_w // w), s, r))
  return np.concatenate(out)


def inside_image(boxes, image_shape_hw, allowed_border=0) -> jax.Array:
  """Anchors that lie inside the image, which Faster R-CNN alone uses in training.

  boxes: [..., 4] (x1, y1, x2, y2); image_shape_hw: (H, W), may be traced;
  allowed_border: pixels an anchor may stick out (0 in the paper's training).
  Returns [...] bool. Coordinates are continuous (x2 = W is the right edge), so
  the test is x1 >= -border and x2 <= W + border (py-faster-rcnn's `x2 < W + border`
  with its inclusive pixel coordinates), likewise for y.
  """
  b = jnp.asarray(boxes)
  if b.ndim < 1 or b.shape[-1] != 4:
    raise ValueError(f"inside_image: boxes must be [..., 4] (x1, y1, x2, y2), got {b.shape}")
  if np.shape(image_shape_hw) != (2,):
    raise ValueError(f"inside_image: image_shape_hw must be (H, W), got {image_shape_hw!r}")
  height, width = image_shape_hw[0], image_shape_hw[1]
  return (
    (b[..., 0] >= -allowed_border)
    & (b[..., 1] >= -allowed_border)
    & (b[..., 2] <= width + allowed_border)
    & (b[..., 3] <= height + allowed_border)
  )
