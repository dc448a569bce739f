"""VGG (Simonyan & Zisserman 2015): configurations A, B, D, E as VGG11, 13, 16, 19.

Every conv is 3x3, stride 1, pad 1 (it keeps the map size) followed by a ReLU;
every pool is 2x2 max pooling with stride 2. With 224x224 inputs:

    block  maps        A (VGG11)  B (VGG13)  D (VGG16)  E (VGG19)
    1      224x224x64  1 conv     2 convs    2 convs    2 convs
    2      112x112x128 1          2          2          2
    3      56x56x256   2          2          3          4
    4      28x28x512   2          2          3          4
    5      14x14x512   2          2          3          4
    pool5  7x7x512; avgpool: adaptive average 7x7 (identity at 224)
    classifier.0 linear 25088 -> 4096, ReLU, dropout
    classifier.3 linear 4096 -> 4096, ReLU, dropout
    classifier.6 linear 4096 -> 1000

Parameters with 1,000 classes (equal to torchvision's): VGG11 132,863,336,
VGG13 133,047,848, VGG16 138,357,544, VGG19 143,667,240. The `_BN` variants
(batch norm after every conv, as torchvision's vgg*_bn; not in the paper) add
a scale and a shift per conv channel: VGG11_BN 132,868,840, VGG13_BN
133,053,736, VGG16_BN 138,365,992, VGG19_BN 143,678,248; their running means
and variances are in `batch_stats`, as they are buffers, not parameters, in
torch. Any input of at least 32x32 works (2**5 for the five pools).

The layout is torchvision's: `features.N` numbers each conv, batch norm, ReLU
and pool in order, so that `research.convert.torchvision` maps every key. How
the paper differs: configuration C (16 layers, three of them 1x1 convs) and
the LRN variant A-LRN are not here; at test time the paper also evaluates
densely, turning fc6-fc8 into 7x7 and 1x1 convolutions (see FCN), where
torchvision pools any input to 7x7 adaptively; and for training it
initializes the deeper nets from the trained configuration A, where
torchvision (followed here) uses Kaiming-normal convs (fan out) and N(0, 0.01)
linear layers.

`out` names every layer as the paper does: conv1_1, (bn1_1 for the `_BN`
variants,) relu1_1, conv1_2, ..., pool1, ..., conv5_3, relu5_3, pool5, avgpool,
fc6, relu6, fc7, relu7, pre_logits (the input of the last linear layer:
relu7 after dropout) and logits (fc8), as in AlexNet and ZFNet.

Backbones: `num_classes=0` builds torchvision's `features` only (no avgpool, no
`classifier.*` layers: fc6, fc7 and fc8 are all the classifier) and `__call__` returns
(None, out), out holding every conv, bn, relu and pool. `feature_strides` gives the
stride of each: 2**(b - 1) for block b's convs (conv4_3/relu4_3 8, conv5_3/relu5_3 16),
2**b for pool b (pool5 32). `conv` and `norm` are module arguments (flax's
examples/imagenet style); `norm` (None: torch's BatchNorm) is used by the `_BN` variants
only, e.g. `VGG16_BN(num_classes=0, norm=research.models.norms.FrozenBatchNorm)`. With
`dtype=jnp.bfloat16` the layers compute in bfloat16; parameters and batch statistics stay
float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from research.models import check_num_classes
from research.models.alexnet import flatten_chw
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import adaptive_avg_pool, max_pool

# Filters of each conv in order, "M" for a 2x2 max pool (the paper's Table 1).
CONFIGS = {
  "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
  "E": (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
  ),
}

# torchvision's initialization, which lets the deep plain nets train from scratch.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(0.01)

ModuleDef = Any
# Flax momentum 0.9 is torch's momentum 0.1; torch's epsilon.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class VGG(nn.Module):
  """VGG. `__call__(x [N, H, W, 3], H, W >= 2**pools) -> (logits [N, num_classes], out)`.

  cfg: filters of each conv, "M" for a max pool (CONFIGS, or a small one for
  tests). batch_norm: BatchNorm after each conv. hidden: width of fc6 and fc7
  (4096 in the paper). num_classes 0: the features only, returning (None, out).
  conv: built as conv(features, (3, 3), padding=1, kernel_init=, dtype=, name=).
  norm: with batch_norm, built as norm(use_running_average=not train, dtype=, name=);
  None is torch's BatchNorm.
  """

  cfg: Sequence[int | str] = CONFIGS["D"]
  batch_norm: bool = False
  num_classes: int = 1000
  in_channels: int = 3
  hidden: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out` (avgpool excluded)."""
    strides, block, conv = {}, 1, 1
    for v in self.cfg:
      if v == "M":
        strides[f"pool{block}"] = 2**block
        block, conv = block + 1, 1
        continue
      kinds = ("conv", "bn", "relu") if self.batch_norm else ("conv", "relu")
      strides |= {f"{kind}{block}_{conv}": 2 ** (block - 1) for kind in kinds}
      conv += 1
    return strides

  @property
  def model_name(self) -> str:
    depth = sum(v != "M" for v in self.cfg) + 3  # convs and the three linear layers
    return f"VGG{depth}" + ("_BN" if self.batch_norm else "")

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # Each pool halves the map (floor), so 2**pools pixels leave one after the last.
    min_size = 2 ** sum(v == "M" for v in self.cfg)
    check_num_classes(self.num_classes, self.model_name)
    if self.norm is not None and not self.batch_norm:
      raise ValueError(
        f"{self.model_name}: norm is used only with batch_norm=True (the _BN variants); "
        f"received norm={self.norm!r} with batch_norm=False."
      )
    check_images(x, model=self.model_name, channels=self.in_channels, min_size=min_size)
    out = {}
    x = x.astype(self.dtype)
    index, block, conv = 0, 1, 1  # torchvision's features index; the paper's block and conv
    for v in self.cfg:
      if v == "M":
        x = out[f"pool{block}"] = max_pool(x, 2)
        index, block, conv = index + 1, block + 1, 1
        continue
      name = f"{block}_{conv}"
      x = out[f"conv{name}"] = self.conv(
        v, (3, 3), padding=1, kernel_init=_conv_init, dtype=self.dtype, name=f"features.{index}"
      )(x)
      index += 1
      if self.batch_norm:
        x = out[f"bn{name}"] = (self.norm or BatchNorm)(
          use_running_average=not train, dtype=self.dtype, name=f"features.{index}"
        )(x)
        index += 1
      x = out[f"relu{name}"] = nn.relu(x)
      index, conv = index + 1, conv + 1
    if not self.num_classes:
      return None, out
    x = out["avgpool"] = adaptive_avg_pool(x, 7)
    x = flatten_chw(x)
    dense = functools.partial(nn.Dense, kernel_init=_dense_init, dtype=self.dtype)
    x = out["fc6"] = dense(self.hidden, name="classifier.0")(x)
    x = out["relu6"] = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="classifier.2")(x)
    x = out["fc7"] = dense(self.hidden, name="classifier.3")(x)
    x = out["relu7"] = nn.relu(x)
    x = out["pre_logits"] = nn.Dropout(
      self.dropout_rate, deterministic=not train, name="classifier.5"
    )(x)
    logits = out["logits"] = dense(self.num_classes, name="classifier.6")(x)
    return logits, out


VGG11 = functools.partial(VGG, cfg=CONFIGS["A"])
VGG13 = functools.partial(VGG, cfg=CONFIGS["B"])
VGG16 = functools.partial(VGG, cfg=CONFIGS["D"])
VGG19 = functools.partial(VGG, cfg=CONFIGS["E"])
VGG11_BN = functools.partial(VGG, cfg=CONFIGS["A"], batch_norm=True)
VGG13_BN = functools.partial(VGG, cfg=CONFIGS["B"], batch_norm=True)
VGG16_BN = functools.partial(VGG, cfg=CONFIGS["D"], batch_norm=True)
VGG19_BN = functools.partial(VGG, cfg=CONFIGS["E"], batch_norm=True)
