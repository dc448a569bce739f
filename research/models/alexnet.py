"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), in torchvision's single-GPU layout.

    input 224x224x3
    features.0   conv 64@11x11 / 4, pad 2  -> 55x55x64,  ReLU      23,296 parameters
    features.2   max pool 3x3 / 2          -> 27x27x64
    features.3   conv 192@5x5, pad 2       -> 27x27x192, ReLU     307,392
    features.5   max pool 3x3 / 2          -> 13x13x192
    features.6   conv 384@3x3, pad 1       -> 13x13x384, ReLU     663,936
    features.8   conv 256@3x3, pad 1       -> 13x13x256, ReLU     884,992
    features.10  conv 256@3x3, pad 1       -> 13x13x256, ReLU     590,080
    features.12  max pool 3x3 / 2          -> 6x6x256
    avgpool      adaptive average 6x6      -> 6x6x256 (identity at 224)
    classifier.1 dropout, linear 9216 -> 4096, ReLU          37,752,832
    classifier.4 dropout, linear 4096 -> 4096, ReLU          16,781,312
    classifier.6 linear 4096 -> 1000                          4,097,000
                                               61,100,840 in all (1,000 classes)

How the 2012 paper differs: its five conv layers have 96, 256, 384, 384 and
256 filters, each layer split in two halves over two GPUs, with conv2, conv4
and conv5 seeing only the maps of their own GPU (about 60M parameters); a local
response normalization (k=2, n=5, alpha=1e-4 not divided by n, beta=0.75)
follows the ReLUs of conv1 and conv2; and the paper says 224x224 inputs, although 11x11 filters at
stride 4 without padding need 227x227 to give its 55x55 maps. torchvision
follows the one-GPU variant of "One weird trick" (Krizhevsky 2014): 64, 192,
384, 256, 256 filters, no LRN, padding 2 so that 224 gives 55, and an adaptive
average pool so any input of at least 63x63 works. Its dropout (rate 0.5,
training only) comes before fc6 and before fc7, where the paper drops the
outputs of fc6 and fc7.

`out` names every layer as the papers number them: conv1, relu1, pool1,
conv2, relu2, pool2, conv3, relu3, conv4, relu4, conv5, relu5, pool5, avgpool,
fc6, relu6, fc7, relu7, pre_logits (the input of the last linear layer, equal
to relu7) and logits (fc8). ZFNet and VGG use the same scheme.

Backbone: `num_classes=0` builds torchvision's `features` only (no avgpool, no
`classifier.*`: fc6, fc7 and fc8 are all the classifier) and `__call__` returns (None, out),
out holding conv1 .. pool5. `feature_strides`: conv1/relu1 4, pool1 8, conv2/relu2 8, pool2
16, conv3-5/relu3-5 16, pool5 32. With `dtype=jnp.bfloat16` convs, dense layers and pools
compute in bfloat16; parameters stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models import check_num_classes
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import adaptive_avg_pool, max_pool

# The smallest H and W with a positive size after pool5: 63 -> 15 -> 7 -> 3 -> 1.
MIN_SIZE = 63

_STRIDES = {
  **{f"{kind}1": 4 for kind in ("conv", "relu")},
  "pool1": 8,
  **{f"{kind}2": 8 for kind in ("conv", "relu")},
  "pool2": 16,
  **{f"{kind}{i}": 16 for i in (3, 4, 5) for kind in ("conv", "relu")},
  "pool5": 32,
}


def flatten_chw(x):
  """[N, H, W, C] -> [N, C*H*W] in torch's (C, H, W) order.

  torchvision flattens NCHW maps, so flattening in the same order lets its
  classifier.1 weights load without a permutation and keeps the converter
  generic.
  """
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class AlexNet(nn.Module):
  """AlexNet. `__call__(x [N, H, W, 3], H, W >= 63) -> (logits [N, num_classes], out)`.

  `hidden` is the width of fc6 and fc7 (4096 in the paper); smaller values make
  a model for small data sets and tests. num_classes 0: the features only, returning
  (None, out).
  """

  num_classes: int = 1000
  in_channels: int = 3
  hidden: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out` (avgpool excluded)."""
    return dict(_STRIDES)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_num_classes(self.num_classes, "AlexNet")
    check_images(x, model="AlexNet", channels=self.in_channels, min_size=MIN_SIZE)
    out = {}
    x = x.astype(self.dtype)
    # (paper layer, torchvision index, filters, kernel, stride, padding, pooled afterwards)
    layers = (
      (1, 0, 64, 11, 4, 2, True),
      (2, 3, 192, 5, 1, 2, True),
      (3, 6, 384, 3, 1, 1, False),
      (4, 8, 256, 3, 1, 1, False),
      (5, 10, 256, 3, 1, 1, True),
    )
    for i, index, features, kernel, stride, padding, pooled in layers:
      x = out[f"conv{i}"] = Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=padding,
        dtype=self.dtype,
        name=f"features.{index}",
      )(x)
      x = out[f"relu{i}"] = nn.relu(x)
      if pooled:
        x = out[f"pool{i}"] = max_pool(x, 3, stride=2)
    if not self.num_classes:
      return None, out
    x = out["avgpool"] = adaptive_avg_pool(x, 6)
    x = flatten_chw(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="classifier.0")(x)
    x = out["fc6"] = nn.Dense(self.hidden, dtype=self.dtype, name="classifier.1")(x)
    x = out["relu6"] = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="classifier.3")(x)
    x = out["fc7"] = nn.Dense(self.hidden, dtype=self.dtype, name="classifier.4")(x)
    x = out["relu7"] = out["pre_logits"] = nn.relu(x)
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier.6")(x)
    return logits, out
