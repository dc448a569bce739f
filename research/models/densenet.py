"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017): every layer sees all earlier maps.

A dense block of L layers: layer l receives the concatenation of the block input
and the k ("growth rate") maps of each earlier layer, so a block that starts with
c0 channels ends with c0 + L*k. The "BC" model used everywhere here:

    dense layer  BN-ReLU-conv1x1(4k) - BN-ReLU-conv3x3(k)   (B: bottleneck, bn_size=4)
    transition   BN-ReLU-conv1x1(floor(c/2)) - avgpool 2x2/2 (C: compression 0.5)
    head         BN-ReLU - global average pool - linear

ImageNet models, torchvision layout and names (`features.conv0`, `features.norm0`,
`features.denseblock1.denselayer1.norm1`, `features.transition1.conv`, `features.norm5`,
`classifier`): stem conv 7x7/2 (2k filters) - BN - ReLU - maxpool 3x3/2 pad 1, four blocks

    DenseNet121  k=32, blocks [6, 12, 24, 16], 64 stem filters    7,978,856 parameters
    DenseNet161  k=48, blocks [6, 12, 36, 24], 96 stem filters   28,681,000
    DenseNet169  k=32, blocks [6, 12, 32, 32], 64 stem filters   14,149,480
    DenseNet201  k=32, blocks [6, 12, 48, 32], 64 stem filters   20,013,928

(1000 classes; the counts are torchvision's). They accept images of at least 29x29.

DenseNetBC100, the paper's CIFAR model (its Table 2, "DenseNet-BC (L=100, k=12)"), as the
official Torch code (liuzhuang13/DenseNet, models/densenet.lua) builds it: depth 100 =
3 blocks x 16 bottleneck layers x 2 convs + the stem conv, two transitions and the
classifier; stem a single conv 3x3/1 pad 1 with 2k = 24 filters (no BN, ReLU or pool: the
first dense layer's BN-ReLU follows it); channels 24 -> 216 | 108 -> 300 | 150 -> 342;
transitions BN-ReLU-conv1x1-avgpool2; head BN-ReLU-global pool-linear. 769,162
parameters for 10 classes, 800,032 for 100 (the paper's "0.8M"). Input 32x32 (any size
of at least 4x4 runs: the head pools globally where the Torch code pools 8x8).

How the code differs from the papers' implementations: convolutions have no bias (the
official code also deletes them: a bias before batch norm is redundant); convs are
initialized He-normal over fan-in as torchvision does (the Torch code uses fan-out); the
optional `drop_rate` drops after each dense layer's 3x3 conv as torchvision does, where the
Torch code (used only for the paper's no-augmentation runs, rate 0.2) also drops after the
1x1 and transition convs.

Backbones: `num_classes=0` builds no `classifier` and `__call__` returns (None, out), out
holding the same maps. `feature_strides` gives each map's stride: for the ImageNet stem
stem 4, denseblock1 4, transition1 8, denseblock2 8, transition2 16, denseblock3 16,
transition3 32, denseblock4 32, features 32 (the CIFAR stem starts at 1). `conv` and
`norm` are module arguments (flax's examples/imagenet style; None is torch's BatchNorm).
With `dtype=jnp.bfloat16` convs, concatenations and pools run in bfloat16; parameters and
batch statistics stay float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models import check_num_classes
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import max_pool

# torchvision's init for DenseNet convs: kaiming_normal_ (fan-in, ReLU gain).
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

ModuleDef = Any
# Flax momentum 0.9 is torch's momentum 0.1; torch's epsilon.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class _DenseLayer(nn.Module):
  """BN-ReLU-conv1x1(bn_size*k)-BN-ReLU-conv3x3(k): x [N, H, W, c] -> new maps [N, H, W, k]."""

  growth_rate: int
  bn_size: int
  drop_rate: float
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(
      nn.relu(self.norm(name="norm1")(x))
    )
    y = self.conv(self.growth_rate, (3, 3), padding=1, name="conv2")(
      nn.relu(self.norm(name="norm2")(y))
    )
    if self.drop_rate > 0:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return y


class _DenseBlock(nn.Module):
  """`num_layers` dense layers: x [N, H, W, c] -> [N, H, W, c + num_layers * k]."""

  num_layers: int
  growth_rate: int
  bn_size: int
  drop_rate: float
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, *, train: bool):
    features = [x]
    for i in range(1, self.num_layers + 1):
      layer = _DenseLayer(
        self.growth_rate, self.bn_size, self.drop_rate, self.norm, self.conv, name=f"denselayer{i}"
      )
      features.append(layer(jnp.concatenate(features, axis=-1), train=train))
    return jnp.concatenate(features, axis=-1)


class _Transition(nn.Module):
  """BN-ReLU-conv1x1-avgpool 2x2/2: x [N, H, W, c] -> [N, H//2, W//2, features]."""

  features: int
  norm: Callable[..., nn.Module]
  conv: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (1, 1), name="conv")(nn.relu(self.norm(name="norm")(x)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet-BC. `__call__(x [N, H, W, 3]) -> (logits [N, num_classes], out)`.

  Attributes:
    growth_rate: k, the maps each dense layer adds.
    block_config: the number of dense layers in each block.
    num_init_features: the stem conv's filters (2k in the paper).
    stem: "imagenet" (conv 7x7/2, BN, ReLU, maxpool 3x3/2) or "cifar" (conv 3x3/1).
    bn_size: the bottleneck 1x1 conv has bn_size * k filters.
    compression: a transition keeps floor(compression * c) of its c input maps.
    drop_rate: dropout after each dense layer (active only with train=True).
    num_classes: 0 builds no classifier; `__call__` then returns (None, out).
    conv: built as conv(features, (k, k), [strides=, padding=,] use_bias=False,
      kernel_init=, dtype=, name=).
    norm: built as norm(use_running_average=not train, dtype=, name=); None is torch's
      BatchNorm.
    dtype: the computation dtype (bfloat16 for mixed precision).

  `out` names the stages: stem, denseblock1, transition1, ..., denseblockB (before the
  final BN), features (after norm5 and ReLU), pre_logits [N, C] and logits.
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  stem: str = "imagenet"
  bn_size: int = 4
  compression: float = 0.5
  drop_rate: float = 0.0
  num_classes: int = 1000
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out`."""
    stride = 4 if self.stem == "imagenet" else 1
    strides = {"stem": stride}
    for i in range(1, len(self.block_config) + 1):
      strides[f"denseblock{i}"] = stride
      if i < len(self.block_config):
        stride *= 2
        strides[f"transition{i}"] = stride
    return strides | {"features": stride}

  def min_size(self) -> int:
    """The smallest H and W for which every pooling still has an output."""
    n = 2 ** (len(self.block_config) - 1)  # each transition halves (floor) the size
    if self.stem == "imagenet":
      n = 2 * (2 * n - 1) - 1  # maxpool 3x3/2 pad 1, then conv 7x7/2 pad 3
    return n

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    name = type(self).__name__
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"{name}: stem must be 'imagenet' or 'cifar'; received {self.stem!r}.")
    check_num_classes(self.num_classes, name)
    check_images(x, model=name, channels=3, min_size=self.min_size())
    norm = functools.partial(
      self.norm or BatchNorm, use_running_average=not train, dtype=self.dtype
    )
    conv = functools.partial(self.conv, use_bias=False, kernel_init=_he_normal, dtype=self.dtype)
    out = {}
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.num_init_features, (7, 7), strides=2, padding=3, name="features.conv0")(x)
      x = nn.relu(norm(name="features.norm0")(x))
      x = max_pool(x, 3, stride=2, padding=1)  # pads -inf
    else:
      x = conv(self.num_init_features, (3, 3), padding=1, name="features.conv0")(x)
    out["stem"] = x
    for i, num_layers in enumerate(self.block_config, start=1):
      x = out[f"denseblock{i}"] = _DenseBlock(
        num_layers,
        self.growth_rate,
        self.bn_size,
        self.drop_rate,
        norm,
        conv,
        name=f"features.denseblock{i}",
      )(x, train=train)
      if i < len(self.block_config):
        features = int(x.shape[-1] * self.compression)
        x = out[f"transition{i}"] = _Transition(
          features, norm, conv, name=f"features.transition{i}"
        )(x)
    x = out["features"] = nn.relu(norm(name="features.norm5")(x))
    x = out["pre_logits"] = x.mean(axis=(1, 2))
    if not self.num_classes:
      return None, out
    logits = out["logits"] = nn.Dense(
      self.num_classes, dtype=self.dtype, bias_init=nn.initializers.zeros, name="classifier"
    )(x)
    return logits, out


DenseNet121 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64
)
DenseNet161 = functools.partial(
  DenseNet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96
)
DenseNet169 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64
)
DenseNet201 = functools.partial(
  DenseNet, growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64
)
DenseNetBC100 = functools.partial(
  DenseNet,
  growth_rate=12,
  block_config=(16, 16, 16),
  num_init_features=24,
  stem="cifar",
  num_classes=10,
)
