"""Per-record crops and resizes of variable-size photographs (ImageNet), before batching.

Each takes a record {"image": uint8 [H, W, 3], ...} and returns the record with
a fixed-size uint8 image, so records of any size can be batched. Random ones
also take a numpy Generator (the pipeline seeds one per record from the seed
and the record's position in the stream). Resizing is PIL's bilinear, with
antialiasing, as torchvision's on PIL images.

    RandomResizedCrop  Inception-style: a random area (8%-100%) and aspect ratio
                       (3/4-4/3) resized to size x size (GoogLeNet, torchvision's
                       ResNet recipe)
    ScaleJitterCrop    shorter side resized to S in [s_min, s_max], random
                       size x size crop (VGG's scale jittering; AlexNet with
                       s_min = s_max = 256)
    ResizeCenterCrop   shorter side resized to `resize`, the central size x size
                       crop (evaluation)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C], PIL's bilinear with antialiasing."""
  if image.shape[:2] == (height, width):
    return image
  # PIL has 8-bit modes of 1, 3 and 4 channels only; others go channel by channel.
  if image.shape[-1] in (3, 4):
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
  planes = [
    Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
      (width, height), Image.Resampling.BILINEAR
    )
    for c in range(image.shape[-1])
  ]
  return np.stack([np.asarray(p) for p in planes], axis=-1)


def _shorter_side_to(image: np.ndarray, side: int) -> np.ndarray:
  h, w = image.shape[:2]
  # The longer side truncated, as torchvision's Resize(int) computes it.
  if h <= w:
    return resize(image, side, int(side * w / h))
  return resize(image, int(side * h / w), side)


def _check(record: dict, size: int) -> np.ndarray:
  image = np.asarray(record["image"])
  if image.ndim != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
    raise ValueError(
      f"image: expected a uint8 [H, W, C] photograph; received {image.dtype} of shape "
      f"{image.shape}."
    )
  if size < 1:
    raise ValueError(f"crop size: expected a positive integer; received {size}.")
  return image


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """A crop of random area fraction in `scale` and aspect ratio in `ratio`, resized."""

  size: int = 224
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image = _check(record, self.size)
    h, w = image.shape[:2]
    log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
    # Ten tries at a crop that fits, then the central crop of the ratio's bounds,
    # as torchvision does.
    for _ in range(10):
      area = h * w * rng.uniform(*self.scale)
      aspect = math.exp(rng.uniform(*log_ratio))
      cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
      if 0 < cw <= w and 0 < ch <= h:
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        break
    else:
      aspect = min(max(w / h, self.ratio[0]), self.ratio[1])
      cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
      cw, ch = min(cw, w), min(ch, h)
      top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    return {**record, "image": resize(crop, self.size, self.size)}


@dataclasses.dataclass(frozen=True)
class ScaleJitterCrop:
  """Shorter side resized to S, uniform in [s_min, s_max]; a random size x size crop."""

  size: int = 224
  s_min: int = 256
  s_max: int = 512

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image = _check(record, self.size)
    if not self.size <= self.s_min <= self.s_max:
      raise ValueError(
        f"input.scale_range: expected crop size {self.size} <= s_min <= s_max; received "
        f"({self.s_min}, {self.s_max})."
      )
    image = _shorter_side_to(image, int(rng.integers(self.s_min, self.s_max + 1)))
    h, w = image.shape[:2]
    top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
    return {**record, "image": image[top : top + self.size, left : left + self.size]}


@dataclasses.dataclass(frozen=True)
class ResizeCenterCrop:
  """Shorter side resized to `resize`, then the central size x size crop."""

  size: int = 224
  resize: int = 256

  def __call__(self, record: dict) -> dict:
    image = _shorter_side_to(_check(record, self.size), self.resize)
    h, w = image.shape[:2]
    top, left = round((h - self.size) / 2), round((w - self.size) / 2)  # torchvision's
    return {**record, "image": image[top : top + self.size, left : left + self.size]}


# The eigen-decomposition of ImageNet's RGB covariance (pixels in [0, 1]) that AlexNet's
# colour augmentation uses, as published with fb.resnet.torch.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array(
  [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
  np.float32,
)


@dataclasses.dataclass(frozen=True)
class PCALighting:
  """AlexNet's colour augmentation on a normalized batch: add eigvec @ (alpha * eigval),
  alpha ~ N(0, alpha_std) per image, to every pixel (divided by the normalization's std).

  batch["image"] [B, H, W, 3] float32, values already (x - mean) / std with x in [0, 1].
  """

  alpha_std: float = 0.1
  std: tuple[float, float, float] = (1.0, 1.0, 1.0)

  def __call__(self, batch: dict, rngs: list[np.random.Generator]) -> dict:
    alpha = np.stack([rng.normal(0.0, self.alpha_std, 3) for rng in rngs]).astype(np.float32)
    shift = (alpha * IMAGENET_EIGVAL) @ IMAGENET_EIGVEC.T / np.float32(self.std)
    return {**batch, "image": batch["image"] + shift[:, None, None, :]}
