"""Fully convolutional networks (Long, Shelhamer & Darrell 2015) and torchvision's FCN-ResNet.

FCN-VGG16, as the reference implementation (shelhamer/fcn.berkeleyvision.org,
voc-fcn32s/16s/8s net.py) builds it, for an [N, H, W, 3] normalized image and C classes:

    features.0 .. features.28  VGG16's 13 convs (torchvision's names), conv1_1 padded by
                               100; 2x2 max pools in ceil mode (Caffe's), pool5 stride 32
    fc6       conv 7x7 VALID, 4096, ReLU, dropout 0.5   (VGG's classifier.0, reshaped)
    fc7       conv 1x1, 4096, ReLU, dropout 0.5         (classifier.3)
    score_fr  conv 1x1, C, zero-initialized             (classifier.6 when C is its classes)
    FCN-32s   upscore 64x64/32 -> crop 19 -> score [N, H, W, C]
    FCN-16s   upscore2 4x4/2 + crop(score_pool4 = conv 1x1 on pool4, zero-init, 5)
              = fuse_pool4 -> upscore16 32x32/16 -> crop 27
    FCN-8s    as 16s to fuse_pool4 -> upscore_pool4 4x4/2 + crop(score_pool3, 9)
              = fuse_pool3 -> upscore8 16x16/8 -> crop 31

The variants share their names, so that FCN-16s starts from FCN-32s's variables and
FCN-8s from FCN-16s's, the new skip's score layer at zero, as the staged training does.
Every upsampling is a transposed convolution, no padding or bias, whose kernel is the
bilinear one of `research.ops.kernels.bilinear_upsampling(factor)` for each class. The
reference fixes them all (lr_mult 0; its FAQ: learning them made no difference); the paper
learned the intermediate ones: `learnable_upsampling=("upscore2", "upscore_pool4")`. The
skips are the staged nets' (no 0.01 and 0.0001 scaling of pool4 and pool3, which only the
"at-once" FCN-8s has).

Why pad 100 and ceil-mode pools: with them every input size H >= 1 leaves a score map at
least H + offset wide, and the crop offsets, which follow from the layers' geometry (each
map's coordinates are an affine function of the input's; see `CROPS`), align the output
with the input pixel for pixel. torchvision's VGG floors its pools; with floor mode 12
input sizes in 32 (H + 198 = 20..31 mod 32) leave FCN-32s's score map too small to
crop.

Parameters with 21 classes (the fixed upsampling kernels are constants, not parameters):
FCN32s 134,346,581 (the paper's Table 1 "134M": VGG16's 138,357,544 minus fc8's
4,097,000, plus score_fr's 86,037), FCN16s 134,357,354 (+ score_pool4 10,773), FCN8s
134,362,751 (+ score_pool3 5,397). Caffe stores the fixed kernels too, [C, C, k, k]
each (zero off the diagonal): 1,806,336 for upscore, 7,056 for upscore2 and
upscore_pool4, 451,584 for upscore16, 112,896 for upscore8 with C = 21.

`out` holds VGG's conv1_1, relu1_1, ..., pool5 (at the padded input's scale), fc6,
relu6, fc7, relu7, score_fr, the variant's upscore*, score_pool*, score_pool*c
(cropped), fuse_pool*, and score (the logits). `ConvolutionalizedVGG` is the
classifier turned into convs without FCN's padding (the "sliding window for free" of
Section 3.1), and `convolutionalize` turns a trained `vgg.VGG16`'s variables into these
networks' fc6, fc7 and score_fr.

`FCN_ResNet50` / `FCN_ResNet101`: torchvision's `fcn_resnet50/101` layout and names
(backbone.*, classifier.*, aux_classifier.*), so `research.convert.torchvision.convert`
maps every key: a ResNet with replace_stride_with_dilation (False, True, True) (output
stride 8), `FCNHead(2048, C)` on layer4 (conv 3x3 -> 512 without bias, BN, ReLU,
dropout 0.1, conv 1x1 -> C) and, with aux_loss, `FCNHead(1024, C)` on layer3, each
resized bilinearly to the input (F.interpolate, align_corners=False). Parameters, 21
classes: FCN_ResNet50 32,957,013, with aux_loss 35,322,218 (torchvision's count).

All take normalized NHWC images and return (logits [N, H, W, C] at the input's
resolution, out); dropout needs an rng "dropout" when train=True.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import check_num_classes, resnet, vgg
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.kernels import bilinear_upsampling
from research.ops.pooling import max_pool

ModuleDef = Any

# torchvision's VGG initialization (vgg.py), so that a randomly initialized FCN body is
# the one VGG16 would have.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.normal(0.01)

# conv1_1's padding in the reference: enough that any input leaves a score map to crop.
PADDING = 100
# The reference's crop offsets (Caffe's coord_map): with x_in the input's coordinate, a
# map's coordinate is (x_in + b) / stride. conv1_1 (pad 100) gives x + 99, each 2x2 pool
# (x - 0.5) / 2, so pool3 is (x + 95.5) / 8, pool4 (x + 91.5) / 16, pool5 (x + 83.5) / 32,
# fc6 (7x7 VALID) (x - 12.5) / 32. A transposed conv of stride s and kernel k maps y to
# s y + (k - 1) / 2: upscore (x + 19), upscore2 (x + 11.5) / 16, upscore16 (x + 27),
# upscore_pool4 (x + 23.5) / 8, upscore8 (x + 31). A crop removes the difference.
CROPS = {"upscore": 19, "score_pool4c": 5, "upscore16": 27, "score_pool3c": 9, "upscore8": 31}
# The upsampling layers of each variant: (name, factor).
UPSAMPLING = {
  32: (("upscore", 32),),
  16: (("upscore2", 2), ("upscore16", 16)),
  8: (("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)),
}


def conv_transpose(x, kernel, stride: int):
  """A transposed convolution without padding or bias, in torch's orientation.

  x: [N, h, w, Ci]; kernel: [k, k, Ci, Co], or [k, k] applied to each channel alone
  (depthwise, Co = Ci), with stride <= k <= 2 stride. Returns [N, (h - 1) stride + k,
  (w - 1) stride + k, Co] with out[i, j] = sum over m, n of x[m, n] kernel[i - stride m,
  j - stride n] (torch's ConvTranspose2d, Caffe's Deconvolution; flax's nn.ConvTranspose
  with transpose_kernel=False uses the kernel flipped in both spatial axes).

  Computed by phases rather than as a convolution of the input dilated by zeros (what
  lax.conv_transpose lowers to): with k <= 2 stride each output pixel sees at most 2 x 2
  inputs, so out's block (q, r) sums x[q - a, r - b] times kernel block (a, b) for a, b in
  {0, 1}; XLA:CPU would otherwise multiply k^2 kernel taps per output pixel, most by zero.
  """
  s, k = stride, kernel.shape[0]
  if not s <= k <= 2 * s or kernel.shape[1] != k:
    raise ValueError(
      f"conv_transpose: kernel must be [k, k, ...] with stride <= k <= 2 stride; received "
      f"kernel shape {tuple(kernel.shape)} with stride {s}."
    )
  n, h, w, _ = x.shape
  depthwise = kernel.ndim == 2
  # Zeros after the kernel's end make it 2s wide; they add nothing to the output.
  kernel = jnp.pad(kernel, ((0, 2 * s - k), (0, 2 * s - k)) + ((0, 0),) * (kernel.ndim - 2))
  x_padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = 0
  for a in (0, 1):
    for b in (0, 1):
      shifted = x_padded[:, 1 - a : 2 - a + h, 1 - b : 2 - b + w]  # x[q - a, r - b]
      block = kernel[a * s : (a + 1) * s, b * s : (b + 1) * s]
      if depthwise:
        out = out + shifted[:, :, None, :, None, :] * block[:, None, :, None].astype(x.dtype)
      else:
        out = out + jnp.einsum("nhwi,rsio->nhrwso", shifted, block.astype(x.dtype))
  out = out.reshape(n, (h + 1) * s, (w + 1) * s, -1)
  return out[:, : (h - 1) * s + k, : (w - 1) * s + k]


def _bilinear_init(factor: int):
  """kernel_init of a learnable upsampling: bilinear from each class to itself, zero
  between classes (the reference's surgery.interp on Caffe's zero-filled weights)."""

  def init(key, shape, dtype=jnp.float32):
    del key
    k, _, ci, co = shape
    return jnp.einsum("hw,io->hwio", bilinear_upsampling(factor), jnp.eye(ci, co)).astype(dtype)

  return init


class BilinearUpsampling(nn.Module):
  """FCN's upsampling by `factor`: x [N, h, w, C] -> [N, (h - 1) f + k, (w - 1) f + k, C],
  k = 2 f - f % 2, no padding, no bias (Caffe's Deconvolution(k, stride f)).

  learnable False: the fixed bilinear kernel of each class, a constant (no parameters:
  the reference's lr_mult 0, and neither momentum nor weight decay may move it). True: a
  `kernel` [k, k, C, C] parameter initialized to bilinear on the diagonal, zero elsewhere,
  laid out and applied as `nn.ConvTranspose(C, (k, k), strides=f, padding="VALID",
  use_bias=False)` would (tests/models/test_fcn.py compares them).
  """

  factor: int
  learnable: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not self.learnable:
      return conv_transpose(x.astype(self.dtype), bilinear_upsampling(self.factor), self.factor)
    k = 2 * self.factor - self.factor % 2
    c = x.shape[-1]
    kernel = self.param("kernel", _bilinear_init(self.factor), (k, k, c, c), jnp.float32)
    # nn.ConvTranspose (transpose_kernel=False) correlates: torch's kernel flipped.
    return conv_transpose(x.astype(self.dtype), kernel[::-1, ::-1], self.factor)


def _crop(x, offset: int, size: Sequence[int]):
  """x [N, h, w, C] -> x[:, offset : offset + size[0], offset : offset + size[1]]."""
  if x.shape[1] < offset + size[0] or x.shape[2] < offset + size[1]:
    raise ValueError(  # cannot happen with pad 100 and ceil-mode pools; a guard for edits
      f"crop: a map of shape {x.shape} cannot give {tuple(size)} at offset {offset}."
    )
  return x[:, offset : offset + size[0], offset : offset + size[1]]


def _vgg_trunk(module, x, *, train: bool, padding: int, ceil_mode: bool, out: dict):
  """VGG's features with fc6 and fc7 as convs, built in `module`'s scope (call it from
  its compact __call__) under VGG's names (features.N), so that `convolutionalize` and
  torchvision's features.* keys map one to one. Returns relu7 after dropout."""
  conv = functools.partial(module.conv, kernel_init=_conv_init, dtype=module.dtype)
  index, block, i = 0, 1, 1  # torchvision's features index; the paper's block and conv
  for v in module.cfg:
    if v == "M":
      # Caffe's ceil mode pads odd maps at the bottom and right (max_pool pads with -inf).
      pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2)) if ceil_mode else 0
      x = out[f"pool{block}"] = max_pool(x, 2, padding=pad)
      index, block, i = index + 1, block + 1, 1
      continue
    if index == 0 and padding > 1:
      # Zeros around the image then the conv's own 1: conv1_1 padded by `padding`. (Padding
      # the conv by 100 directly crashes oneDNN's gradient when padding >= the kernel.)
      x = jnp.pad(x, ((0, 0), (padding - 1,) * 2, (padding - 1,) * 2, (0, 0)))
    x = out[f"conv{block}_{i}"] = conv(v, (3, 3), padding=1, name=f"features.{index}")(x)
    if module.batch_norm:  # VGG-BN's layout: conv, BatchNorm, ReLU (features.N, N+1, N+2)
      index += 1
      x = out[f"bn{block}_{i}"] = vgg.BatchNorm(
        use_running_average=not train, dtype=module.dtype, name=f"features.{index}"
      )(x)
    x = out[f"relu{block}_{i}"] = nn.relu(x)
    index, i = index + 2, i + 1
  dense = functools.partial(module.conv, kernel_init=_dense_init, padding=0, dtype=module.dtype)
  x = out["fc6"] = dense(module.hidden, (7, 7), name="fc6")(x)
  x = out["relu6"] = nn.relu(x)
  x = nn.Dropout(module.dropout_rate, deterministic=not train, name="drop6")(x)
  x = out["fc7"] = dense(module.hidden, (1, 1), name="fc7")(x)
  x = out["relu7"] = nn.relu(x)
  return nn.Dropout(module.dropout_rate, deterministic=not train, name="drop7")(x)


def _score(module, x, name: str):
  """A zero-initialized 1x1 score layer (Caffe's default filler is constant 0)."""
  return module.conv(
    module.num_classes,
    (1, 1),
    padding=0,
    kernel_init=nn.initializers.zeros,
    dtype=module.dtype,
    name=name,
  )(x)


def _check_segmenter_classes(num_classes, model: str) -> None:
  check_num_classes(num_classes, model)
  if num_classes == 0:
    raise ValueError(
      f"{model}: num_classes must be >= 1 (a segmenter has no headless form; use the "
      "classifier with num_classes=0 as a backbone); received num_classes=0."
    )


class ConvolutionalizedVGG(nn.Module):
  """VGG with fc6, fc7 and fc8 as 7x7, 1x1 and 1x1 convs, without FCN's padding.

  `__call__(x [N, H, W, 3], H, W >= 224) -> (scores [N, (H - 192) // 32, (W - 192) // 32,
  num_classes], out)` for H, W multiples of 32: the classifier applied to every 224x224
  window at stride 32 of the pool5 map, in one pass ("sliding window for free"). At 224 it
  is the classifier's logits. Names as FCN's (features.N, fc6, fc7, score_fr for fc8), so
  `convolutionalize(vgg_variables)` gives its variables. Pools floor, as torchvision's.
  """

  num_classes: int = 1000
  cfg: Sequence[int | str] = vgg.CONFIGS["D"]
  hidden: int = 4096
  dropout_rate: float = 0.5
  batch_norm: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv

  @property
  def model_name(self) -> str:
    return "ConvolutionalizedVGG"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    _check_segmenter_classes(self.num_classes, self.model_name)
    # Floor-mode pools: fc6's 7x7 needs 7 * 2**pools pixels (224 for VGG16).
    min_size = 7 * 2 ** sum(v == "M" for v in self.cfg)
    check_images(x, model=self.model_name, channels=3, min_size=min_size)
    out = {}
    x = _vgg_trunk(self, x.astype(self.dtype), train=train, padding=1, ceil_mode=False, out=out)
    scores = out["score_fr"] = out["logits"] = _score(self, x, "score_fr")
    return scores, out


class FCN(nn.Module):
  """FCN-VGG16. `__call__(x [N, H, W, 3], any H, W >= 1) -> (logits [N, H, W, C], out)`.

  stride: 32, 16 or 8, the variant (FCN32s, FCN16s, FCN8s). cfg, hidden (fc6/fc7
  width), dropout_rate: VGG's, smaller for tests. learnable_upsampling: names of the
  variant's upsampling layers whose kernels are parameters (default none, as the
  reference; the paper: ("upscore2", "upscore_pool4")). batch_norm: VGG-BN's trunk
  (BatchNorm after each conv, torchvision's vgg16_bn names), not the paper's; for nets
  trained from scratch. conv: built as conv(features,
  (k, k), padding=, kernel_init=, dtype=, name=). dtype: the computation dtype.
  """

  num_classes: int = 21
  stride: int = 32
  cfg: Sequence[int | str] = vgg.CONFIGS["D"]
  hidden: int = 4096
  dropout_rate: float = 0.5
  learnable_upsampling: Sequence[str] = ()
  batch_norm: bool = False
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv

  @property
  def model_name(self) -> str:
    return f"FCN-{self.stride}s"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.stride not in UPSAMPLING:
      raise ValueError(f"FCN: stride must be 32, 16 or 8; received stride={self.stride!r}.")
    name = self.model_name
    layers = dict(UPSAMPLING[self.stride])
    unknown = set(self.learnable_upsampling) - set(layers)
    if unknown:
      raise ValueError(
        f"{name}: learnable_upsampling names layers of {sorted(layers)}; received "
        f"{sorted(unknown)}."
      )
    _check_segmenter_classes(self.num_classes, name)
    check_images(x, model=name, channels=3, min_size=1)
    size = x.shape[1:3]
    out = {}
    h = _vgg_trunk(
      self, x.astype(self.dtype), train=train, padding=PADDING, ceil_mode=True, out=out
    )
    score = out["score_fr"] = _score(self, h, "score_fr")

    def upsample(y, layer):
      learnable = layer in self.learnable_upsampling
      return BilinearUpsampling(layers[layer], learnable, dtype=self.dtype, name=layer)(y)

    def fuse(y, pool):
      """y plus pool's scores (a zero-started 1x1 conv), cropped to y's size."""
      skip = out[f"score_{pool}"] = _score(self, out[pool], f"score_{pool}")
      skip = out[f"score_{pool}c"] = _crop(skip, CROPS[f"score_{pool}c"], y.shape[1:3])
      return y + skip

    if self.stride == 32:
      score = out["upscore"] = upsample(score, "upscore")
    else:
      score = out["upscore2"] = upsample(score, "upscore2")
      score = out["fuse_pool4"] = fuse(score, "pool4")
      if self.stride == 16:
        score = out["upscore16"] = upsample(score, "upscore16")
      else:
        score = out["upscore_pool4"] = upsample(score, "upscore_pool4")
        score = out["fuse_pool3"] = fuse(score, "pool3")
        score = out["upscore8"] = upsample(score, "upscore8")
    final = UPSAMPLING[self.stride][-1][0]  # the last upsampling's crop
    logits = out["score"] = _crop(score, CROPS[final], size)
    return logits, out


FCN32s = functools.partial(FCN, stride=32)
FCN16s = functools.partial(FCN, stride=16)
FCN8s = functools.partial(FCN, stride=8)


def convolutionalize(
  vgg_variables: Mapping, num_classes: int | None = None, *, into: Mapping | None = None
) -> dict:
  """A trained `vgg.VGG`'s variables -> FCN's / ConvolutionalizedVGG's {"params": ...}.

  features.N are copied; classifier.0 ([C * 49, hidden], torch's (C, H, W) flatten order,
  `alexnet.flatten_chw`) becomes fc6 [7, 7, C, hidden], classifier.3 fc7 [1, 1, hidden,
  hidden], and classifier.6 ([hidden, K]) score_fr [1, 1, hidden, K] when num_classes is
  None or K (the classifier convolutionalized); otherwise score_fr is left out (FCN's is
  new and zero-initialized). A VGG-BN's batch_stats (features.N) come along, for an
  FCN(batch_norm=True). into: an FCN's variables (from `init`): returned with these
  entries replaced (shapes checked), num_classes defaulting to its score_fr's.
  """
  params = vgg_variables.get("params", vgg_variables)
  if "classifier.0" not in params:
    raise ValueError(
      "convolutionalize: the VGG has no classifier (built with num_classes=0?); expected "
      f"classifier.0, .3 and .6 among {sorted(params)}."
    )
  if into is not None and num_classes is None:
    num_classes = into["params"]["score_fr"]["kernel"].shape[-1]
  fc6 = params["classifier.0"]["kernel"]
  channels = fc6.shape[0] // 49
  new = {k: dict(v) for k, v in params.items() if k.startswith("features.")}
  # flatten_chw's index is c * 49 + h * 7 + w: unflatten (C, 7, 7), then HWIO.
  kernel = jnp.reshape(fc6, (channels, 7, 7, fc6.shape[1])).transpose(1, 2, 0, 3)
  new["fc6"] = {"kernel": kernel, "bias": params["classifier.0"]["bias"]}
  fc7 = params["classifier.3"]
  new["fc7"] = {"kernel": fc7["kernel"][None, None], "bias": fc7["bias"]}
  fc8 = params["classifier.6"]
  if num_classes is None or num_classes == fc8["kernel"].shape[-1]:
    new["score_fr"] = {"kernel": fc8["kernel"][None, None], "bias": fc8["bias"]}
  # A VGG-BN's running statistics go with its features (FCN(batch_norm=True)).
  stats = {k: dict(v) for k, v in (vgg_variables.get("batch_stats") or {}).items()}
  if into is None:
    return {"params": new, **({"batch_stats": stats} if stats else {})}
  merged = dict(into)
  merged["params"] = dict(into["params"])
  if stats:
    merged["batch_stats"] = {**dict(into.get("batch_stats") or {}), **stats}
  for name, leaves in new.items():
    target = into["params"].get(name)
    if target is None:
      raise ValueError(f"convolutionalize: `into` has no layer {name!r}.")
    for leaf, value in leaves.items():
      if tuple(value.shape) != tuple(target[leaf].shape):
        raise ValueError(
          f"convolutionalize: {name}/{leaf} is {tuple(value.shape)} from the VGG but "
          f"{tuple(target[leaf].shape)} in `into`."
        )
    merged["params"][name] = leaves
  return merged


class FCNHead(nn.Module):
  """torchvision's FCNHead: x [N, h, w, Cin] -> [N, h, w, channels].

  "0" conv 3x3 -> Cin / 4 (no bias), "1" BN, ReLU, "3" dropout 0.1, "4" conv 1x1 ->
  channels; torchvision's Sequential indices are the names.
  """

  channels: int
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # torch's default init of the head's convs (uniform, bound 1 / sqrt(fan_in)).
    init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    conv = functools.partial(self.conv, kernel_init=init, dtype=self.dtype)
    x = conv(x.shape[-1] // 4, (3, 3), padding=1, use_bias=False, name="0")(x)
    x = (self.norm or resnet.BatchNorm)(use_running_average=not train, dtype=self.dtype, name="1")(
      x
    )
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name="3")(x)
    return conv(self.channels, (1, 1), padding=0, name="4")(x)


def _resize(x, size: Sequence[int]):
  """Bilinear resize to `size` (H, W) with half-pixel centres and no antialiasing: torch's
  F.interpolate(mode="bilinear", align_corners=False), edges clamped as there."""
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear", antialias=False)


class FCNResNet(nn.Module):
  """torchvision's FCN on a dilated ResNet (output stride 8).

  `__call__(x [N, H, W, 3], any H, W >= 1) -> (logits [N, H, W, C], out)`: logits are
  torchvision's result["out"]; out holds the backbone's stem, stage1..stage4 (stage3 and
  stage4 at stride 8), classifier (the head's scores at stride 8) and, with aux_loss,
  aux_classifier and aux (torchvision's result["aux"], [N, H, W, C]).
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  num_classes: int = 21
  aux_loss: bool = False
  num_filters: int = 64
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @property
  def model_name(self) -> str:
    depth = 3 * sum(self.stage_sizes) + 2
    return f"FCN_ResNet{depth}"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    name = self.model_name
    _check_segmenter_classes(self.num_classes, name)
    check_images(x, model=name, channels=3, min_size=1)
    size = x.shape[1:3]
    _, features = resnet.ResNet(
      stage_sizes=self.stage_sizes,
      block_cls=resnet.Bottleneck,
      num_classes=0,
      num_filters=self.num_filters,
      replace_stride_with_dilation=(False, True, True),
      dtype=self.dtype,
      conv=self.conv,
      norm=self.norm,
      name="backbone",
    )(x, train=train)
    out = {k: v for k, v in features.items() if k != "pre_logits"}  # no avgpool in torch's
    head = functools.partial(
      FCNHead, self.num_classes, dtype=self.dtype, conv=self.conv, norm=self.norm
    )
    scores = out["classifier"] = head(name="classifier")(features["stage4"], train=train)
    logits = _resize(scores, size)
    if self.aux_loss:
      aux = out["aux_classifier"] = head(name="aux_classifier")(features["stage3"], train=train)
      out["aux"] = _resize(aux, size)
    return logits, out


FCN_ResNet50 = functools.partial(FCNResNet, stage_sizes=(3, 4, 6, 3))
FCN_ResNet101 = functools.partial(FCNResNet, stage_sizes=(3, 4, 23, 3))
