"""YOLO's convolutional network (Redmon et al. 2016, Figure 3), and its classifier.

The detection network of the paper has 24 convolutional layers and 2 fully connected
ones; 1x1 reduction layers alternate with 3x3 convolutions (after GoogLeNet, without its
inception modules); every layer but the last uses the leaky rectifier
phi(x) = max(x, 0.1 x). With 448x448 inputs:

    conv1       7x7x64 stride 2, maxpool 2x2/2                      -> 112x112x64
    conv2       3x3x192, maxpool                                    -> 56x56x192
    conv3..6    1x1x128, 3x3x256, 1x1x256, 3x3x512, maxpool          -> 28x28x512
    conv7..16   {1x1x256, 3x3x512} x 4, 1x1x512, 3x3x1024, maxpool   -> 14x14x1024
    conv17..20  {1x1x512, 3x3x1024} x 2                              -> 14x14x1024
    conv21..24  3x3x1024, 3x3x1024 stride 2, 3x3x1024, 3x3x1024       -> 7x7x1024
    fc1         4096, dropout 0.5; fc2 S x S x (B * 5 + C) = 7x7x30, linear

The first 20 convolutions are the ImageNet classifier of the paper's pretraining (at 224 px,
88% top-5), followed there by an average pool and a fully connected layer: that is
`Darknet20` here, an ordinary classifier of the project (`(logits, out)`,
`num_classes=0` for the convolutions only). The detector (research.detection.yolo) adds
conv21..24 and the two fully connected layers on top of it under "body".

Fast YOLO "uses a neural network with fewer convolutional layers (9 instead of 24) and
fewer filters in those layers"; the paper gives neither the filters nor where the pools
go. `FAST_BODY` + `FAST_HEAD` read them as darknet's small models are built: 3x3
convolutions doubling from 16 filters, each followed by a 2x2 max pool down to stride 64,
then 1024 and 256 filters: 9 convolutions, stride 64 (448 -> 7).

Layers are named conv1, conv2, ... in order (pools are not numbered), `out` holds every
conv's activation under its name and every pool as pool1, pool2, ..., plus pre_logits and
logits for the classifier. No batch normalization (YOLO v2 added it). The paper does not
give its initialization; the convolutions use He's normal for the leaky rectifier.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models import check_num_classes
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import max_pool

# (filters, kernel) or (filters, kernel, stride); "M" a 2x2 max pool of stride 2.
YOLO_BODY = (
  (64, 7, 2),
  "M",
  (192, 3),
  "M",
  *((128, 1), (256, 3), (256, 1), (512, 3)),
  "M",
  *((256, 1), (512, 3)) * 4,
  *((512, 1), (1024, 3)),
  "M",
  *((512, 1), (1024, 3)) * 2,
)
YOLO_HEAD = ((1024, 3), (1024, 3, 2), (1024, 3), (1024, 3))
FAST_BODY = (
  *((16, 3), "M", (32, 3), "M", (64, 3), "M", (128, 3), "M", (256, 3), "M", (512, 3), "M"),
  (1024, 3),
)
FAST_HEAD = ((1024, 3), (256, 3))
# digit_scenes/multi (128 x 128, digits of 20..40 pixels): the paper's 64-pixel stride would
# leave a 2 x 2 grid, so Fast YOLO's pattern is scaled to stride 16 (S = 8, cells of 16
# pixels, about half a digit): 9 convolutions, three pools and one stride-2 convolution,
# the last a 1x1 reduction that keeps fc1's input at 8 x 8 x 64.
SCENES_BODY = ((16, 3), "M", (32, 3), "M", (64, 3), (32, 1), (64, 3), "M", (128, 3))
SCENES_HEAD = ((256, 3, 2), (256, 3), (64, 1))

LEAK = 0.1
# He et al.'s normal for a leaky rectifier of slope 0.1: gain 2 / (1 + 0.1^2).
_conv_init = nn.initializers.variance_scaling(2.0 / (1 + LEAK**2), "fan_in", "normal")

ModuleDef = Any


def leaky_relu(x):
  """The paper's activation: x for x > 0, 0.1 x otherwise."""
  return nn.leaky_relu(x, LEAK)


def _layer(entry) -> tuple[int, int, int]:
  filters, kernel, *stride = entry
  return filters, kernel, stride[0] if stride else 1


def stride_of(cfg: Sequence) -> int:
  """The total stride of a layer list: 2 per pool and per stride-2 convolution."""
  s = 1
  for v in cfg:
    s *= 2 if v == "M" else _layer(v)[2]
  return s


class ConvLayers(nn.Module):
  """A run of `cfg`'s convolutions (each with a leaky ReLU) and max pools.

  `__call__(x [N, H, W, C]) -> (x, out)` with out {conv{first + i}: ..., pool{j}: ...}; the
  convolutions are numbered from `first` and the pools from `first_pool`, so that a
  detector's extra layers continue its body's numbering.
  """

  cfg: Sequence
  first: int = 1
  first_pool: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv

  @nn.compact
  def __call__(self, x):
    out, index, pool = {}, self.first, self.first_pool
    for v in self.cfg:
      if v == "M":
        x = out[f"pool{pool}"] = max_pool(x, 2)
        pool += 1
        continue
      filters, kernel, stride = _layer(v)
      x = self.conv(
        filters,
        (kernel, kernel),
        strides=stride,
        padding=kernel // 2,  # "same" at stride 1, the paper's map sizes at stride 2
        kernel_init=_conv_init,
        dtype=self.dtype,
        name=f"conv{index}",
      )(x)
      x = out[f"conv{index}"] = leaky_relu(x)
      index += 1
    return x, out


class Darknet(nn.Module):
  """YOLO's pretraining classifier: `cfg`'s convolutions, a global average pool and one
  fully connected layer. `__call__(x [N, H, W, C], H, W >= stride) -> (logits [N,
  num_classes], out)`; `num_classes=0` returns (None, out) with the convolutions only."""

  cfg: Sequence = YOLO_BODY
  num_classes: int = 1000
  in_channels: int = 3
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv

  @property
  def model_name(self) -> str:
    return f"Darknet{sum(v != 'M' for v in self.cfg)}"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout or batch norm in the convolutions
    check_num_classes(self.num_classes, self.model_name)
    check_images(x, model=self.model_name, channels=self.in_channels, min_size=stride_of(self.cfg))
    x, out = ConvLayers(self.cfg, dtype=self.dtype, conv=self.conv, name="features")(
      x.astype(self.dtype)
    )
    if not self.num_classes:
      return None, out
    x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits, out


Darknet20 = functools.partial(Darknet, cfg=YOLO_BODY)
FastDarknet7 = functools.partial(Darknet, cfg=FAST_BODY)
# The scenes detector's body as a classifier: pretrained on single digits in clutter, as the paper
# pretrains its first 20 convolutions on ImageNet (experiments/darknet_imagenet.py:runlocal).
DarknetScenes = functools.partial(Darknet, cfg=SCENES_BODY)
