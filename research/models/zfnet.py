"""ZFNet (Zeiler & Fergus 2013, Fig. 3), named like torchvision's AlexNet.

    input 224x224x3
    features.0   conv 96@7x7 / 2, pad 1    -> 110x110x96, ReLU         14,208 parameters
    features.2   max pool 3x3 / 2, pad 1   -> 55x55x96
    features.3   contrast normalization (LRN across channels)
    features.4   conv 256@5x5 / 2          -> 26x26x256,  ReLU        614,656
    features.6   max pool 3x3 / 2, pad 1   -> 13x13x256
    features.7   contrast normalization (LRN across channels)
    features.8   conv 384@3x3, pad 1       -> 13x13x384,  ReLU        885,120
    features.10  conv 384@3x3, pad 1       -> 13x13x384,  ReLU      1,327,488
    features.12  conv 256@3x3, pad 1       -> 13x13x256,  ReLU        884,992
    features.14  max pool 3x3 / 2          -> 6x6x256
    avgpool      adaptive average 6x6      -> 6x6x256 (identity at 224)
    classifier.1 dropout, linear 9216 -> 4096, ReLU              37,752,832
    classifier.4 dropout, linear 4096 -> 4096, ReLU              16,781,312
    classifier.6 linear 4096 -> 1000 (fc8)                        4,097,000
                                                   62,357,608 in all (1,000 classes)

Each conv has k*k*in*out weights and out biases, each linear layer in*out
weights and out biases; the rows above are that arithmetic.

Choices the paper leaves open. Fig. 3 gives only the map sizes 110, 55, 26,
13, 13, 13, 6; the paddings above are the ones that give them at 224x224
(conv1 pad 1: (224 + 2 - 7) // 2 + 1 = 110; pool1 pad 1: 55; conv2 no pad: 26;
pool2 pad 1: 13; pool5 no pad: 6); padded pool positions never win the max,
as in torch's MaxPool2d(3, 2, padding=1). The paper's "contrast normalization
across feature maps" is implemented as AlexNet's local response normalization
across channels, `local_response_norm`, with AlexNet's constants size 5,
alpha 1e-4, beta 0.75, k 2, written in torch's and Caffe's convention where
alpha is divided by the window size (the AlexNet paper's formula does not
divide, so its normalization would be alpha 5e-4 here; Caffe's LRN defaults
to k 1). The adaptive average pool is not in the paper; it is the identity
at 224 and lets other sizes (>= 53x53) through, as in torchvision's AlexNet.
Dropout (rate 0.5, training only) sits where
torchvision's AlexNet has it, before fc6 and before fc7, rather than on the
outputs of fc6 and fc7. The paper also renormalizes conv filters whose RMS
exceeds 0.1 after each update; that belongs to the training step, not here.
There is no torchvision ZFNet; the names follow torchvision's AlexNet so that
weights in that layout would convert with `research.convert.torchvision`.

`out` names every layer: conv1, relu1, pool1, norm1, conv2, relu2, pool2,
norm2, conv3, relu3, conv4, relu4, conv5, relu5, pool5, avgpool, fc6, relu6,
fc7, relu7, pre_logits (= relu7) and logits (fc8), as in AlexNet and VGG.

Backbone: `num_classes=0` builds the conv layers only (no avgpool, no `classifier.*`) and
`__call__` returns (None, out), out holding conv1 .. pool5. `feature_strides`: conv1/relu1
(and bn1) 2, pool1/norm1 4, conv2/relu2 8, pool2/norm2 16, conv3-5/relu3-5 16, pool5 32.
With `dtype=jnp.bfloat16` convs, dense layers and pools compute in bfloat16 and the
contrast normalization in float32 (in bfloat16, k + alpha / size * sum would round to k);
parameters and batch statistics stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import check_num_classes
from research.models.alexnet import flatten_chw
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import adaptive_avg_pool, max_pool

# The smallest H and W with a positive size after pool5: 53 -> 25 -> 13 -> 5 -> 3 -> 1.
MIN_SIZE = 53


def local_response_norm(x, *, size=5, alpha=1e-4, beta=0.75, k=2.0) -> jax.Array:
  """Normalization across channels (AlexNet's LRN), torch.nn.LocalResponseNorm's formula.

      y[..., c] = x[..., c] / (k + alpha / size * sum_{c'} x[..., c']**2) ** beta

  with c' over the `size` channels centred on c (c - size // 2 .. c + (size - 1) // 2),
  channels beyond the edges counting as zeros.

  x: [..., C] (channels last). Returns the same shape and dtype, computed in float32 at
  least: in bfloat16, k + alpha / size * sum rounds to k for all but large activations.
  """
  dtype, x = x.dtype, x.astype(jnp.promote_types(x.dtype, jnp.float32))
  channels = x.shape[-1]
  pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
  squares = jnp.pad(jnp.square(x), pad)
  sums = sum(squares[..., i : i + channels] for i in range(size))
  return (x / (k + alpha / size * sums) ** beta).astype(dtype)


class ZFNet(nn.Module):
  """ZFNet. `__call__(x [N, H, W, 3], H, W >= 53) -> (logits [N, num_classes], out)`.

  `hidden` is the width of fc6 and fc7 (4096 in the paper) and `features` the
  filter counts of conv1-5 (96, 256, 384, 384, 256); smaller values make a
  model for small data sets and tests. `batch_norm` puts batch normalization
  ("bn1".."bn5") between each conv and its ReLU in place of the contrast
  normalizations, as VGG's _BN variants do: not in the paper, it lets a small
  ZFNet train in minutes on a CPU. num_classes 0: the conv layers only, returning
  (None, out).
  """

  num_classes: int = 1000
  in_channels: int = 3
  hidden: int = 4096
  features: tuple[int, int, int, int, int] = (96, 256, 384, 384, 256)
  batch_norm: bool = False
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out` (avgpool excluded)."""
    strides = {}
    for i, stride, pool in ((1, 2, 4), (2, 8, 16), (3, 16, None), (4, 16, None), (5, 16, 32)):
      kinds = ("conv", "bn", "relu") if self.batch_norm else ("conv", "relu")
      strides |= {f"{kind}{i}": stride for kind in kinds}
      if pool:
        strides[f"pool{i}"] = pool
        if i < 3 and not self.batch_norm:
          strides[f"norm{i}"] = pool
    return strides

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_num_classes(self.num_classes, "ZFNet")
    check_images(x, model="ZFNet", channels=self.in_channels, min_size=MIN_SIZE)
    out = {}
    x = x.astype(self.dtype)
    # (paper layer, torchvision-style index, kernel, stride, padding,
    #  pool padding or None for no pool, normalized after the pool)
    layers = (
      (1, 0, 7, 2, 1, 1, True),
      (2, 4, 5, 2, 0, 1, True),
      (3, 8, 3, 1, 1, None, False),
      (4, 10, 3, 1, 1, None, False),
      (5, 12, 3, 1, 1, 0, False),
    )
    if len(self.features) != 5:
      raise ValueError(f"features: expected 5 filter counts (conv1-5), got {self.features!r}.")
    for (i, index, kernel, stride, padding, pool_padding, normed), features in zip(
      layers, self.features, strict=True
    ):
      x = out[f"conv{i}"] = Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=padding,
        dtype=self.dtype,
        name=f"features.{index}",
      )(x)
      if self.batch_norm:
        x = out[f"bn{i}"] = nn.BatchNorm(
          use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype
        )(x)
      x = out[f"relu{i}"] = nn.relu(x)
      if pool_padding is not None:
        x = out[f"pool{i}"] = max_pool(x, 3, stride=2, padding=pool_padding)
      if normed and not self.batch_norm:
        x = out[f"norm{i}"] = local_response_norm(x)
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
