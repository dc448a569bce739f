"""ResNet (He, Zhang, Ren & Sun 2016) as torchvision builds it, and the CIFAR Wide ResNet.

ImageNet ResNets, torchvision's layout and names (so `research.convert.torchvision`
maps every key), for an [N, 224, 224, 3] input:

    conv1 7x7/2, 64 -> bn1 -> relu -> maxpool 3x3/2     stem    [N, 56, 56, 64]
    layer1 (stride 1)                                   stage1  [N, 56, 56, 64 * e]
    layer2 (stride 2)                                   stage2  [N, 28, 28, 128 * e]
    layer3 (stride 2)                                   stage3  [N, 14, 14, 256 * e]
    layer4 (stride 2)                                   stage4  [N, 7, 7, 512 * e]
    avgpool adaptive 1x1                                pre_logits [N, 512 * e]
    fc                                                  logits  [N, num_classes]

e = 1 for BasicBlock (two 3x3 convs; ResNet-18/34) and 4 for Bottleneck (1x1,
3x3, 1x1; ResNet-50/101/152). A block's shortcut is the identity, or a 1x1 conv
+ BN ("downsample.0", "downsample.1") where the shape changes. Parameters (1000
classes): ResNet18 11,689,512; ResNet34 21,797,672; ResNet50 25,557,032;
ResNet101 44,549,160; ResNet152 60,192,808; WideResNet50_2 68,883,240;
WideResNet101_2 126,886,696 -- torchvision's counts.

How torchvision differs from the paper: torchvision's Bottleneck strides its 3x3
conv ("ResNet v1.5"); the paper strides the first 1x1 conv, which skips three
quarters of the input. The paper's shortcuts on ImageNet are option B
(projections only where the shape changes), as here. WideResNet50_2/101_2 are
torchvision's ImageNet bottleneck ResNets with the 3x3 width doubled, not the
paper's CIFAR networks.

Minimum input 1x1: every strided layer pads by half its window (conv1 7x7/2 pad
3, maxpool 3x3/2 pad 1, 3x3/2 pad 1, 1x1/2 pad 0), so each maps n >= 1 to
floor((n - 1) / 2) + 1 >= 1 and a 1x1 image stays 1x1 through every stage, as
in torchvision.

WideResNet (Zagoruyko & Komodakis 2016), CIFAR WRN-d-k, for [N, 32, 32, 3]:

    conv1 3x3, 16                                          stem   [N, 32, 32, 16]
    layer1: n pre-activation basic blocks, 16k, stride 1   stage1 [N, 32, 32, 16k]
    layer2: n blocks, 32k, stride 2                        stage2 [N, 16, 16, 32k]
    layer3: n blocks, 64k, stride 2                        stage3 [N, 8, 8, 64k]
    bn -> relu -> global average pool                      pre_logits [N, 64k]
    fc                                                     logits [N, num_classes]

with d = 6n + 4. A block is BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus the
identity, or a 1x1 conv ("shortcut") where the shape changes. Dropout sits
after the second ReLU, as in the paper ("between convolutions ... after ReLU")
and the authors' code; where the shape changes the first BN-ReLU is shared by
both branches (the authors' code), so the shortcut conv sees the activated
input. WRN-28-10 has 36,479,194 parameters for 10 classes (the paper's
"36.5M"); convs have no bias. torchvision has no CIFAR WRN; the module names
(conv1, "layer1.0" holding bn1, conv1, bn2, conv2, shortcut; bn, fc) follow its
style, so `convert` loads a PyTorch WRN named the same way.

Backbones: `num_classes=0` builds either family without `fc` and `__call__` returns
(None, out), out holding the same stages; `feature_strides` gives each stage's stride
(ResNet: stem 4, stage1 4, stage2 8, stage3 16, stage4 32, i.e. C2..C5). `conv` and
`norm` are module arguments, as in flax's examples/imagenet (e.g.
`ResNet50(num_classes=0, norm=research.models.norms.FrozenBatchNorm)` for a detector).
With `dtype=jnp.bfloat16` every conv, dense layer and activation is bfloat16 while the
parameters and batch statistics stay float32.
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
from research.ops.pooling import adaptive_avg_pool, max_pool

# torchvision's and the WRN authors' init: He normal over fan-out.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ModuleDef = Any

# Flax momentum 0.9 is torch's momentum 0.1; torch's epsilon.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def _norm(norm: ModuleDef | None, train: bool, dtype: Any, name: str) -> nn.Module:
  return (norm or BatchNorm)(use_running_average=not train, dtype=dtype, name=name)


def _conv(
  conv: ModuleDef, features: int, kernel: int, stride: int, dtype: Any, name: str, dilation: int = 1
):
  # Explicit symmetric padding k // 2, as torch: "SAME" pads asymmetrically at stride 2.
  # A dilated 3x3 pads by its dilation (torchvision's conv3x3), keeping the map size;
  # kernel_dilation is passed only then, so a `conv` without it still builds plain ResNets.
  dilated = {"kernel_dilation": (dilation, dilation)} if dilation != 1 else {}
  return conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=dilation * (kernel // 2),
    use_bias=False,
    kernel_init=_conv_init,
    dtype=dtype,
    name=name,
    **dilated,
  )


class BasicBlock(nn.Module):
  """Two 3x3 convs. x [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), planes]."""

  planes: int
  stride: int = 1
  base_width: int = 64  # torchvision accepts only 64 for BasicBlock.
  dilation: int = 1  # torchvision accepts only 1 for BasicBlock.
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.dilation != 1:
      raise ValueError(
        f"BasicBlock: dilation must be 1 (as in torchvision, dilation is for Bottleneck "
        f"ResNets); received dilation={self.dilation}."
      )
    conv = functools.partial(_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(_norm, self.norm, train, self.dtype)
    identity = x
    y = conv(self.planes, 3, self.stride, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = conv(self.planes, 3, 1, name="conv2")(y)
    y = norm("bn2")(y)
    if x.shape[-1] != self.planes or self.stride != 1:
      identity = conv(self.planes, 1, self.stride, name="downsample.0")(x)
      identity = norm("downsample.1")(identity)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """1x1, 3x3 (strided, v1.5), 1x1 convs. x [N, H, W, C] -> [N, H', W', 4 * planes].

  The inner width is planes * base_width / 64: 64 for ResNets, 128 for the
  wide variants. `dilation` dilates the 3x3 conv (padding = dilation), for the
  stages whose stride `replace_stride_with_dilation` removes.
  """

  planes: int
  stride: int = 1
  base_width: int = 64
  dilation: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(_norm, self.norm, train, self.dtype)
    width = int(self.planes * (self.base_width / 64.0))
    out_planes = self.planes * self.expansion
    identity = x
    y = conv(width, 1, 1, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = conv(width, 3, self.stride, name="conv2", dilation=self.dilation)(y)
    y = nn.relu(norm("bn2")(y))
    y = conv(out_planes, 1, 1, name="conv3")(y)
    y = norm("bn3")(y)
    if x.shape[-1] != out_planes or self.stride != 1:
      identity = conv(out_planes, 1, self.stride, name="downsample.0")(x)
      identity = norm("downsample.1")(identity)
    return nn.relu(y + identity)


class ResNet(nn.Module):
  """ImageNet ResNet. `__call__(x [N, H, W, 3]) -> (logits [N, num_classes], out)`.

  `out`: stem (after maxpool), stage1..stage4 (after layer1..layer4),
  pre_logits [N, 8 * num_filters * expansion], logits. Any H, W >= 1.

  Attributes beyond the architecture's:
    num_classes: 0 builds the backbone: no `fc`, and `__call__` returns (None, out)
      with out holding stem, stage1..stage4 and pre_logits.
    conv: the conv module (flax examples' `conv: ModuleDef`), built as
      conv(features, (k, k), strides=, padding=, use_bias=False, kernel_init=, dtype=, name=).
    norm: the norm module, built as norm(use_running_average=not train, dtype=, name=);
      None is torch's BatchNorm (`BatchNorm` here: momentum 0.1 in torch's sense, eps
      1e-5). Detectors pass `research.models.norms.FrozenBatchNorm`.
    dtype: the computation dtype (bfloat16 for mixed precision); parameters and batch
      statistics stay float32, the logits are in dtype.
    replace_stride_with_dilation: torchvision's argument, one bool for each of layer2..4
      (None: all False): that stage keeps stride 1 and dilates its 3x3 convs instead
      (Bottleneck only), e.g. (False, True, True) for output stride 8 in the
      segmenters (research.models.fcn.FCN_ResNet50). The parameters are the same.

  `feature_strides`: {name: stride} of the maps in `out`, C2..C5 as torchvision's
  detection backbones use them: stem 4, stage1 4, stage2 8, stage3 16, stage4 32
  (stage3 and stage4 8 with (False, True, True)).
  """

  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  num_classes: int = 1000
  num_filters: int = 64
  base_width: int = 64
  in_channels: int = 3
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None
  replace_stride_with_dilation: Sequence[bool] | None = None

  def _schedule(self) -> list[tuple[int, int, int]]:
    """(stride, dilation of the first block, dilation of the others) for each stage.

    torchvision's `_make_layer`: a stage whose stride is replaced by dilation keeps the
    map size and multiplies the dilation by 2 from its second block on; its first
    block keeps the previous dilation.
    """
    dilate = self.replace_stride_with_dilation
    if dilate is not None and len(dilate) != len(self.stage_sizes) - 1:
      raise ValueError(
        f"{type(self).__name__}: replace_stride_with_dilation needs one bool for each "
        f"stage after the first ({len(self.stage_sizes) - 1}); received {dilate!r}."
      )
    schedule, dilation = [], 1
    for i in range(len(self.stage_sizes)):
      stride, previous = (2 if i > 0 else 1), dilation
      if i > 0 and dilate is not None and dilate[i - 1]:
        stride, dilation = 1, dilation * 2
      schedule.append((stride, previous, dilation))
    return schedule

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out`."""
    strides, stride = {"stem": 4}, 4
    for i, (s, _, _) in enumerate(self._schedule()):
      stride *= s
      strides[f"stage{i + 1}"] = stride
    return strides

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    name = type(self).__name__
    check_num_classes(self.num_classes, name)
    check_images(x, model=name, channels=self.in_channels, min_size=1)
    schedule = self._schedule()
    out = {}
    x = x.astype(self.dtype)
    x = _conv(self.conv, self.num_filters, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(_norm(self.norm, train, self.dtype, "bn1")(x))
    x = out["stem"] = max_pool(x, 3, stride=2, padding=1)
    for i, blocks in enumerate(self.stage_sizes):
      stride, first, rest = schedule[i]
      for j in range(blocks):
        dilation = first if j == 0 else rest
        x = self.block_cls(
          planes=self.num_filters * 2**i,
          stride=stride if j == 0 else 1,
          base_width=self.base_width,
          dtype=self.dtype,
          conv=self.conv,
          norm=self.norm,
          name=f"layer{i + 1}.{j}",
          # Only when dilated, so that blocks without the attribute still build.
          **({"dilation": dilation} if dilation != 1 else {}),
        )(x, train=train)
      out[f"stage{i + 1}"] = x
    x = out["pre_logits"] = adaptive_avg_pool(x, 1).reshape(x.shape[0], -1)
    if not self.num_classes:
      return None, out
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits, out


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
WideResNet50_2 = functools.partial(
  ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, base_width=128
)
WideResNet101_2 = functools.partial(
  ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck, base_width=128
)


class WideBasicBlock(nn.Module):
  """WRN's pre-activation basic block.

  x [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), planes].
  """

  planes: int
  stride: int = 1
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(_conv, self.conv, dtype=self.dtype)
    norm = functools.partial(_norm, self.norm, train, self.dtype)
    project = x.shape[-1] != self.planes or self.stride != 1
    y = nn.relu(norm("bn1")(x))
    # Where the shape changes the shortcut conv shares the activated input.
    shortcut = conv(self.planes, 1, self.stride, name="shortcut")(y) if project else x
    y = conv(self.planes, 3, self.stride, name="conv1")(y)
    y = nn.relu(norm("bn2")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.planes, 3, 1, name="conv2")(y)
    return y + shortcut


class WideResNet(nn.Module):
  """CIFAR WRN-depth-widen_factor. `__call__(x [N, H, W, 3]) -> (logits [N, num_classes], out)`.

  `out`: stem [N, H, W, 16], stage1..stage3 (widths 16k, 32k, 64k at strides
  1, 2, 4), pre_logits [N, 64k], logits. Made for 32x32; any H, W >= 1 works.
  Dropout (rate `dropout_rate`, the paper's 0.3) needs an rng "dropout" when
  train=True. depth must be 6n + 4, else ValueError.

  num_classes 0 builds no `fc` and returns (None, out) (the final bn is kept: it belongs
  to the pre-activation trunk); conv, norm and dtype as ResNet's. `feature_strides`:
  stem 1, stage1 1, stage2 2, stage3 4.
  """

  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  num_classes: int = 10
  in_channels: int = 3
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out`."""
    return {"stem": 1, "stage1": 1, "stage2": 2, "stage3": 4}

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    name = f"WRN-{self.depth}-{self.widen_factor}"
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
        f"{name}: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...); "
        f"received depth={self.depth}."
      )
    check_num_classes(self.num_classes, name)
    check_images(x, model=name, channels=self.in_channels, min_size=1)
    n = (self.depth - 4) // 6
    out = {}
    x = x.astype(self.dtype)
    x = out["stem"] = _conv(self.conv, 16, 3, 1, self.dtype, "conv1")(x)
    for i, width in enumerate((16, 32, 64)):
      for j in range(n):
        x = WideBasicBlock(
          planes=width * self.widen_factor,
          stride=2 if i > 0 and j == 0 else 1,
          dropout_rate=self.dropout_rate,
          dtype=self.dtype,
          conv=self.conv,
          norm=self.norm,
          name=f"layer{i + 1}.{j}",
        )(x, train=train)
      out[f"stage{i + 1}"] = x
    x = nn.relu(_norm(self.norm, train, self.dtype, "bn")(x))
    x = out["pre_logits"] = x.mean(axis=(1, 2))
    if not self.num_classes:
      return None, out
    logits = out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return logits, out


WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)
