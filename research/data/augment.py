"""YOLO's training augmentation (Redmon et al. 2016, Section 2.2) on detection records:
"random scaling and translations of up to 20% of the original image size", and "randomly
adjust the exposure and saturation of the image by up to a factor of 1.5 in the HSV colour
space".

Both act on a schema record of research.data.detection (uint8 image [H, W, C], boxes [G, 4]
in pixel edges, optional masks [G, H, W]) before `DetectionTransform` resizes it, and keep
the image's size:
  - `scale_translate`: the image scaled by a in [1 - scale, 1 + scale] about its centre and
    shifted by up to `translate` x its width and height; what comes into view from outside
    is the image's mean colour. Boxes follow and are clipped; an object left with less than
    a pixel of width or height (pushed out of view) is dropped, its mask and flags with it.
  - `hsv_jitter`: V (exposure) and S (saturation) each multiplied by a factor drawn
    log-uniformly in [1 / factor, factor], clipped to the valid range. A one-channel image
    has value only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import color


def _factor(rng: np.random.Generator, limit: float) -> float:
  """log-uniform in [1 / limit, limit]: as likely to darken as to brighten."""
  return float(np.exp(rng.uniform(-np.log(limit), np.log(limit)))) if limit > 1 else 1.0


def _warp(plane: np.ndarray, inverse: tuple, resample, fill) -> np.ndarray:
  h, w = plane.shape[:2]
  return np.asarray(
    Image.fromarray(plane).transform(
      (w, h), Image.Transform.AFFINE, data=inverse, resample=resample, fillcolor=fill
    )
  )


def scale_translate(record: dict, rng: np.random.Generator, *, scale: float, translate: float):
  """The record scaled by up to `scale` and translated by up to `translate` of its size
  (both fractions in [0, 1)); see the module docstring. Proposals are not supported."""
  if not (0 <= scale < 1 and 0 <= translate < 1):
    raise ValueError(
      f"scale_translate: scale and translate must be fractions in [0, 1); received "
      f"scale={scale}, translate={translate}."
    )
  if "proposals" in record:
    raise ValueError("scale_translate: records with proposals are not supported (R-CNN's).")
  image = np.asarray(record["image"])
  h, w = image.shape[:2]
  a = rng.uniform(1 - scale, 1 + scale)
  tx, ty = rng.uniform(-translate, translate, 2) * (w, h)
  cx, cy = w / 2, h / 2
  # Output pixel p shows input (p - centre - t) / a + centre: PIL wants that inverse map.
  inverse = (1 / a, 0, cx - (cx + tx) / a, 0, 1 / a, cy - (cy + ty) / a)
  mean = image.reshape(-1, image.shape[-1]).mean(0).round().astype(np.uint8)
  if image.shape[-1] == 3:
    warped = _warp(image, inverse, Image.Resampling.BILINEAR, tuple(int(v) for v in mean))
  else:
    planes = [
      _warp(np.ascontiguousarray(image[..., c]), inverse, Image.Resampling.BILINEAR, int(mean[c]))
      for c in range(image.shape[-1])
    ]
    warped = np.stack(planes, axis=-1)
  boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
  shift = np.array([cx + tx, cy + ty] * 2, np.float32)
  centre = np.array([cx, cy] * 2, np.float32)
  moved = np.clip(a * (boxes - centre) + shift, 0, np.array([w, h, w, h], np.float32))
  keep = (moved[:, 2] - moved[:, 0] >= 1) & (moved[:, 3] - moved[:, 1] >= 1)
  out = {**record, "image": warped, "boxes": moved[keep]}
  for key in ("labels", "difficult", "crowd"):
    if key in record:
      out[key] = np.asarray(record[key])[keep]
  if "masks" in record:
    masks = np.asarray(record["masks"])[keep]
    out["masks"] = np.stack(
      [_warp(m, inverse, Image.Resampling.NEAREST, 0) for m in masks]
    ).reshape(len(masks), h, w)
  return out


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, *, exposure: float, saturation: float):
  """uint8 [H, W, C] -> uint8 [H, W, C] with V times up to `exposure` and S times up to
  `saturation` (factors >= 1; see the module docstring)."""
  if exposure < 1 or saturation < 1:
    raise ValueError(
      f"hsv_jitter: exposure and saturation are factors >= 1; received exposure={exposure}, "
      f"saturation={saturation}."
    )
  v, s = _factor(rng, exposure), _factor(rng, saturation)
  image = np.asarray(image)
  if image.shape[-1] != 3:
    return np.clip(image.astype(np.float32) * v, 0, 255).round().astype(np.uint8)
  hsv = color.rgb2hsv(image)
  hsv[..., 1] = np.clip(hsv[..., 1] * s, 0, 1)
  hsv[..., 2] = np.clip(hsv[..., 2] * v, 0, 1)
  return (color.hsv2rgb(hsv) * 255).round().astype(np.uint8)
