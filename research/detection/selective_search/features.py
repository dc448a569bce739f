"""Selective search's image side: colour spaces, initial regions and per-region histograms.

Everything here is per colour space and shared by every `k` and similarity set
of that space: `pixel_codes` bins each pixel once, and `regions` turns one
Felzenszwalb-Huttenlocher segmentation into sizes, boxes, neighbour pairs and
L1-normalized histograms with a single `np.bincount` per histogram kind.

Colour spaces hold values in [0, 1] per channel, as the authors' code feeds
its histograms (`Image2ColourSpace`): "hsv"; "lab" as the 8-bit Lab encoding
(L * 255 / 100, a + 128, b + 128) / 255; "rgi" normalized r, g and the
intensity; "h" the hue alone; "i" the intensity alone (Rec. 709 luma, what
`rgb2gray` computes). The one-channel spaces keep one channel where the
authors' code repeats it three times: the L1-normalized histograms and their
intersections come out the same.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage import color

COLOUR_SPACES = ("hsv", "lab", "rgi", "h", "i")
COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
TEXTURE_SIGMA = 1.0  # the paper's sigma (the authors' code passes 0.8)
# The authors' bound on a rectified Gaussian derivative of a [0, 1] channel: a
# unit step peaks at 1 / (sqrt(2 pi) sigma) = 0.40; larger values share the top bin.
TEXTURE_MAX = 0.43
REFERENCE_AREA = 500 * 375  # a typical Pascal VOC image, what the paper's k was tuned on


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """rgb: float [..., 3] in [0, 1] -> float64 [..., 3] (h, s, v) in [0, 1], as skimage's rgb2hsv.

  The same definition (hue 0 where the pixel is grey, blue over green over red
  where channels tie for the maximum) in a few array operations: about five
  times faster than `skimage.color.rgb2hsv`, which indexes per case.
  """
  r, g, b = np.moveaxis(rgb, -1, 0)
  v = rgb.max(-1)
  delta = v - rgb.min(-1)
  grey = delta == 0
  safe = np.where(grey, 1.0, delta)
  h = np.select([b == v, g == v], [4 + (r - g) / safe, 2 + (b - r) / safe], (g - b) / safe)
  h = np.where(grey, 0.0, (h / 6) % 1)
  s = np.where(grey, 0.0, delta / np.where(v > 0, v, 1.0))
  return np.stack([h, s, v], -1)


def colour_space(image: np.ndarray, name: str) -> np.ndarray:
  """image: uint8 [H, W, 3] RGB -> float64 [H, W, C] in [0, 1], C = 3 or 1 (see module doc)."""
  rgb = image / 255.0
  if name == "hsv":
    out = rgb_to_hsv(rgb)
  elif name == "h":
    out = rgb_to_hsv(rgb)[..., :1]
  elif name == "lab":
    lab = color.rgb2lab(rgb)
    out = np.stack([lab[..., 0] / 100, (lab[..., 1] + 128) / 255, (lab[..., 2] + 128) / 255], -1)
  elif name == "i":
    out = color.rgb2gray(rgb)[..., None]
  elif name == "rgi":
    total = rgb.sum(-1, keepdims=True)
    # A black pixel has no chromaticity; the grey point keeps it with its neighbours.
    rg = np.where(total > 0, rgb[..., :2] / np.maximum(total, 1e-12), 1 / 3)
    out = np.concatenate([rg, color.rgb2gray(rgb)[..., None]], -1)
  else:
    raise ValueError(f"colour_space: name must be one of {COLOUR_SPACES}, got {name!r}")
  return np.clip(out, 0, 1)


def oriented_gradients(channels: np.ndarray, sigma: float = TEXTURE_SIGMA) -> np.ndarray:
  """channels: [H, W, C] -> float32 [H, W, C, 8] rectified Gaussian derivatives, 8 orientations.

  Orientation o is the derivative along (cos, sin)(o * 45 degrees), steered
  from the x and y derivatives, keeping its positive part, as the authors'
  `Image2OrientedGradients`: opposite orientations hold the two signs of one
  derivative, so each pixel is nonzero in at most four of them.
  """
  planes = np.moveaxis(channels, -1, 0).astype(np.float32)
  x = np.stack([ndimage.gaussian_filter(p, sigma, order=(0, 1)) for p in planes], -1)
  y = np.stack([ndimage.gaussian_filter(p, sigma, order=(1, 0)) for p in planes], -1)
  angles = np.arange(ORIENTATIONS) * (2 * np.pi / ORIENTATIONS)
  steer = np.stack([np.cos(angles), np.sin(angles)]).astype(np.float32)  # [2, 8]
  grad = np.stack([x, y], -1) @ steer  # [H, W, C, 2] @ [2, 8]
  return np.maximum(grad, 0)


@dataclasses.dataclass(frozen=True)
class PixelCodes:
  """Per-pixel histogram bins of one colour space, offsets included.

  channels: float64 [H, W, C] in [0, 1], what the segmentation sees.
  colour: int32 [H*W, C], channel c's bin plus c * 25, so that one bincount
  over (region, code) builds every region's C x 25 histogram at once.
  texture_pixel, texture_code: int64 [E], the pixels and (map * 10 + bin)
  codes of the texture maps (channel c, orientation o: map 8 c + o) whose
  bin is not 0. Most entries are in bin 0 (every pixel is 0 in at least four
  orientations), so a region's bin-0 counts follow from its size instead.
  """

  channels: np.ndarray
  colour: np.ndarray
  texture_pixel: np.ndarray
  texture_code: np.ndarray

  @property
  def colour_dim(self) -> int:
    return self.colour.shape[1] * COLOUR_BINS

  @property
  def texture_maps(self) -> int:
    return self.channels.shape[2] * ORIENTATIONS


def pixel_codes(image: np.ndarray, name: str) -> PixelCodes:
  """image: uint8 [H, W, 3] RGB; name: a colour space. Bins every pixel once per colour space."""
  channels = colour_space(image, name)
  h, w, c = channels.shape
  bins = np.minimum((channels * COLOUR_BINS).astype(np.int32), COLOUR_BINS - 1)
  colour = bins.reshape(h * w, c) + np.arange(c, dtype=np.int32) * COLOUR_BINS
  grad = oriented_gradients(channels).reshape(h * w * c * ORIENTATIONS)
  # Clip before the cast: uint8 holds every bin, and a 6M-entry map stays small.
  scaled = np.minimum(grad * (TEXTURE_BINS / TEXTURE_MAX), TEXTURE_BINS - 1)
  bins = scaled.astype(np.uint8)
  (entry,) = np.nonzero(bins)
  maps = c * ORIENTATIONS
  code = entry % maps * TEXTURE_BINS + bins[entry]
  return PixelCodes(channels, colour, entry // maps, code)


def min_size(k: float, height: int, width: int) -> int:
  """FH's smallest region (pixels) for threshold k on a height x width image.

  The authors' code sets min_size = k, on VOC images of about 500 x 375. On a
  smaller image the same objects cover fewer pixels, and a fixed minimum
  merges them away before grouping starts, so it shrinks with the image's
  linear size: k * min(1, sqrt(H W / (500 * 375))). VOC-sized and larger
  images keep the authors' value. (On 128 x 128 digit_scenes, fast mode,
  recall at IoU 0.5 is 0.89 with min_size = k and 0.99 with this; scaling
  with the area instead, 1.00 but with 3x the boxes, mostly noise.)
  """
  return max(1, round(k * min(1.0, np.sqrt(height * width / REFERENCE_AREA))))


def colour_histograms(labels: np.ndarray, sizes: np.ndarray, codes: PixelCodes) -> np.ndarray:
  """labels: int [H*W] 0..n-1, sizes [n] -> float64 [n, 25 C], rows summing to 1."""
  n, dim = len(sizes), codes.colour_dim
  index = labels[:, None] * dim + codes.colour
  hist = np.bincount(index.ravel(), minlength=n * dim).reshape(n, dim)
  return hist / (sizes[:, None] * codes.colour.shape[1])


def texture_histograms(labels: np.ndarray, sizes: np.ndarray, codes: PixelCodes) -> np.ndarray:
  """labels: int [H*W] 0..n-1, sizes [n] -> float64 [n, 80 C], rows summing to 1."""
  n, maps = len(sizes), codes.texture_maps
  dim = maps * TEXTURE_BINS
  index = labels[codes.texture_pixel] * dim + codes.texture_code
  hist = np.bincount(index, minlength=n * dim).reshape(n, maps, TEXTURE_BINS).astype(np.float64)
  hist[:, :, 0] = sizes[:, None] - hist[:, :, 1:].sum(-1)
  return hist.reshape(n, dim) / (sizes[:, None] * maps)


def neighbour_pairs(labels: np.ndarray) -> np.ndarray:
  """labels [H, W] -> int64 [E, 2] pairs (a, b), a < b, of regions touching in 8-connectivity.

  8-connectivity is the grid the segmentation's graph uses, so a region joined
  to another only through a corner still counts as its neighbour.
  """
  n = int(labels.max()) + 1
  shifts = (
    (labels[:, :-1], labels[:, 1:]),
    (labels[:-1, :], labels[1:, :]),
    (labels[:-1, :-1], labels[1:, 1:]),
    (labels[:-1, 1:], labels[1:, :-1]),
  )
  keys = []
  for a, b in shifts:
    differ = a != b  # few pixels lie on a boundary: compare first, gather only those
    a, b = a[differ], b[differ]
    keys.append(np.minimum(a, b) * n + np.maximum(a, b))
  keys = np.unique(np.concatenate(keys))
  return np.stack([keys // n, keys % n], 1)


@dataclasses.dataclass(frozen=True)
class Regions:
  """The initial regions of one segmentation, what hierarchical grouping starts from.

  sizes: float64 [n] pixels; boxes: int64 [n, 4] (x1, y1, x2, y2) pixel edges;
  pairs: int64 [E, 2] neighbours; colour: float64 [n, 25 C]; texture: float64
  [n, 80 C] (L1-normalized rows); image_size: H * W.
  """

  sizes: np.ndarray
  boxes: np.ndarray
  pairs: np.ndarray
  colour: np.ndarray
  texture: np.ndarray
  image_size: int


def regions(labels: np.ndarray, codes: PixelCodes) -> Regions:
  """labels: int [H, W] with values 0..n-1; codes: the same image's `pixel_codes`."""
  n = int(labels.max()) + 1
  flat = labels.ravel()
  sizes = np.bincount(flat, minlength=n).astype(np.float64)
  boxes = np.array(
    [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels + 1)],
    np.int64,
  ).reshape(n, 4)
  return Regions(
    sizes=sizes,
    boxes=boxes,
    pairs=neighbour_pairs(labels),
    colour=colour_histograms(flat, sizes, codes),
    texture=texture_histograms(flat, sizes, codes),
    image_size=labels.size,
  )
