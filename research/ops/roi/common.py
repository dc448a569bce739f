"""What RoI Align and RoI pooling share: input checks, IEEE division, chunking over rois."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.boxes.core import _is_concrete
from research.ops.conv import _pair

# Output elements per chunk of rois: about 1 MB of float32, a CPU cache's worth.
_CHUNK_ELEMENTS = 1 << 18


def check_rois(rois, num_images: int, *, fn: str = "check_rois") -> np.ndarray | None:
  """Host-side check that every roi's batch index names one of num_images images.

  rois: [R, 5] (batch index, x1, y1, x2, y2). Returns the rois as a numpy array,
  or None when they are traced (under jit nothing can be checked; an index out
  of range then reads the nearest image).
  """
  if not _is_concrete(rois):
    return None
  values = np.asarray(rois)
  index = values[:, 0]
  bad = np.flatnonzero((index < 0) | (index >= num_images) | (index != np.floor(index)))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f"{fn}: rois[:, 0] must be integer batch indices in [0, {num_images}) for features "
      f"of N={num_images} images, got {float(index[i])} at roi {i} ({bad.size} bad rois)"
    )
  return values


def _validate(features, rois, output_size, spatial_scale, fn: str):
  features, rois = jnp.asarray(features), jnp.asarray(rois)
  if features.ndim != 4:
    raise ValueError(f"{fn}: features must be [N, H, W, C] (NHWC), got shape {features.shape}")
  if rois.ndim != 2 or rois.shape[1] != 5:
    raise ValueError(
      f"{fn}: rois must be [R, 5] (batch index, x1, y1, x2, y2), got shape {rois.shape}"
    )
  if min(features.shape[1:3]) < 1:
    raise ValueError(f"{fn}: features must have H, W >= 1, got shape {features.shape}")
  out_hw = _pair(output_size, "output_size", fn)
  if min(out_hw) < 1:
    raise ValueError(f"{fn}: output_size must be >= 1, got {output_size!r}")
  try:
    scale = float(spatial_scale)
  except TypeError:
    scale = math.nan
  if not (math.isfinite(scale) and scale > 0):
    raise ValueError(f"{fn}: spatial_scale must be a positive float, got {spatial_scale!r}")
  if not jnp.issubdtype(features.dtype, jnp.inexact):
    features = features.astype(jnp.float32)
  # Box arithmetic in at least float32, as torchvision's kernels in the input's type.
  coord = jnp.promote_types(features.dtype, jnp.float32)
  return features, rois.astype(coord), out_hw, scale


def _divide(numerator, denominator):
  """numerator / denominator rounded as IEEE division, like torchvision's C++.

  XLA rewrites x / broadcast(d) as x * broadcast(1 / d), which rounds
  differently (6 / 7 != 6 * (1 / 7) in float32) and moves samples across
  torchvision's validity edges; behind a barrier the divisor is no broadcast.
  """
  denominator = jnp.broadcast_to(denominator, numerator.shape).astype(numerator.dtype)
  return numerator / lax.optimization_barrier(denominator)


def _chunked(body, xs, num_rois: int, elements_per_roi: int):
  """lax.map of body over rois, in chunks whose outputs stay in cache.

  Small chunks matter most for the gradient: the transposed gathers
  scatter-add chunk by chunk into one small gradient buffer.
  """
  batch = max(1, min(num_rois, _CHUNK_ELEMENTS // max(1, elements_per_roi)))
  return lax.map(body, xs, batch_size=batch)
