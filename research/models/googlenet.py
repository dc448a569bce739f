"""GoogLeNet / Inception v1 (Szegedy et al. 2015), in torchvision's layout and names.

An inception module runs four branches on the same input and concatenates them:

    branch1   1x1 conv
    branch2   1x1 conv (reduce) - 3x3 conv
    branch3   1x1 conv (reduce) - 3x3 conv   (the paper's 5x5: see below)
    branch4   3x3/1 max pool - 1x1 conv (pool projection)

    conv1 7x7/2 - maxpool1 3x3/2 - conv2 1x1 - conv3 3x3 - maxpool2 3x3/2
    inception3a, 3b - maxpool3 3x3/2 - inception4a..4e - maxpool4 2x2/2 - inception5a, 5b
    global average pool - dropout 0.2 - fc (1024 -> classes)

Every conv is torchvision's BasicConv2d: conv without bias, BatchNorm (eps 0.001), ReLU.
Every max pool rounds its output size up (torch's ceil_mode=True). Two auxiliary heads,
aux1 on inception4a (512 maps) and aux2 on inception4d (528 maps): adaptive average pool
to 4x4 - BasicConv2d 1x1 (128) - fc1 (2048 -> 1024) - ReLU - dropout 0.7 - fc2.

Parameters (1000 classes): 6,624,904 without the auxiliary heads (torchvision's count for
its pretrained model), 13,004,888 with them. Images must be at least 15x15.

torchvision's pretrained weights (no aux heads, images normalized with ImageNet's mean and
std) convert into `GoogLeNet(aux_logits=False, transform_input=True)`.

How the paper differs: no batch norm (its convs have biases, and it applies local response
normalization after maxpool1 and after conv3); branch3 is a 5x5 conv where torchvision's
is 3x3 (a known torchvision bug, pytorch/vision#906, kept here so the weights convert); the
auxiliary heads average-pool 5x5/3 (4x4 on a 224 image; torchvision pools adaptively to
4x4 for any size) and their 1x1 conv is followed by ReLU only; the dropout before the
classifier is 0.4, not 0.2.

Backbones: `num_classes=0` builds neither `fc` nor the auxiliary heads, and `__call__`
returns (None, out), out holding every stage. `feature_strides`: conv1 2, maxpool1 4, conv2
4, conv3 4, maxpool2 and stem 8, inception3a/3b 8, maxpool3 16, inception4a-4e 16, maxpool4
32, inception5a/5b 32. `conv` and `norm` are module arguments of every BasicConv2d (flax's
examples/imagenet style; norm None is torchvision's BatchNorm with eps 0.001, so a frozen
norm for these weights is `functools.partial(FrozenBatchNorm, epsilon=1e-3)`). With
`dtype=jnp.bfloat16` convs, pools and concatenations run in bfloat16; parameters and batch
statistics stay float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.models import check_num_classes
from research.models.inputs import check_images
from research.models.layers import Conv
from research.ops.pooling import adaptive_avg_pool, max_pool

# torchvision's init for GoogLeNet: trunc_normal_(std=0.01, a=-2, b=2), i.e. truncated at
# 200 standard deviations: a plain normal.
_normal = nn.initializers.normal(0.01)

ModuleDef = Any
# torchvision's BasicConv2d: eps 0.001; Flax momentum 0.9 is torch's momentum 0.1.
BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-3)

_STRIDES = {
  "conv1": 2,
  "maxpool1": 4,
  "conv2": 4,
  "conv3": 4,
  "maxpool2": 8,
  "stem": 8,
  "inception3a": 8,
  "inception3b": 8,
  "maxpool3": 16,
  **{f"inception4{c}": 16 for c in "abcde"},
  "maxpool4": 32,
  "inception5a": 32,
  "inception5b": 32,
}

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) per inception module.
_INCEPTION = {
  "3a": (64, 96, 128, 16, 32, 32),
  "3b": (128, 128, 192, 32, 96, 64),
  "4a": (192, 96, 208, 16, 48, 64),
  "4b": (160, 112, 224, 24, 64, 64),
  "4c": (128, 128, 256, 24, 64, 64),
  "4d": (112, 144, 288, 32, 64, 64),
  "4e": (256, 160, 320, 32, 128, 128),
  "5a": (256, 160, 320, 32, 128, 128),
  "5b": (384, 192, 384, 48, 128, 128),
}


def ceil_output_size(n: int, window: int, stride: int, padding: int = 0) -> int:
  """torch's pooled size with ceil_mode=True; 0 or less means no output."""
  out = -(-(n + 2 * padding - window) // stride) + 1
  # torch drops a last window that would start inside the right padding.
  if out > 0 and (out - 1) * stride >= n + padding:
    out -= 1
  return out


def max_pool_ceil(x, window: int, stride: int, padding: int = 0) -> jax.Array:
  """torch's MaxPool2d(window, stride, padding, ceil_mode=True) on x [N, H, W, C].

  Rounding the output size up lets the last window hang over the bottom/right edge; the
  missing rows and columns are -inf, so they never win. Returns [N, oh, ow, C] with
  oh = ceil_output_size(H, window, stride, padding), likewise ow.
  """
  pads, sizes = [], []
  for n in x.shape[1:3]:
    out = ceil_output_size(n, window, stride, padding)
    if out < 1:
      raise ValueError(
        f"max_pool_ceil: window {window} stride {stride} padding {padding} gives no output "
        f"for x of shape {tuple(x.shape)}."
      )
    pads.append((padding, max(0, (out - 1) * stride + window - n - padding)))
    sizes.append(out)
  y = max_pool(x, window, stride=stride, padding=tuple(pads))
  return y[:, : sizes[0], : sizes[1]]


class _BasicConv2d(nn.Module):
  """conv (no bias) - BatchNorm (eps 0.001) - ReLU: x [N, H, W, c] -> [N, H', W', features]."""

  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    k = self.kernel_size
    x = self.conv(
      self.features,
      (k, k),
      strides=self.strides,
      padding=self.padding,
      use_bias=False,
      kernel_init=_normal,
      dtype=self.dtype,
      name="conv",
    )(x)
    x = (self.norm or BatchNorm)(use_running_average=not train, dtype=self.dtype, name="bn")(x)
    return nn.relu(x)


class _Inception(nn.Module):
  """Four branches concatenated: x [N, H, W, c] -> [N, H, W, ch1x1 + ch3x3 + ch5x5 + pool_proj]."""

  ch1x1: int
  ch3x3red: int
  ch3x3: int
  ch5x5red: int
  ch5x5: int
  pool_proj: int
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(_BasicConv2d, dtype=self.dtype, conv=self.conv, norm=self.norm)
    branch1 = conv(self.ch1x1, 1, name="branch1")(x, train=train)
    branch2 = conv(self.ch3x3red, 1, name="branch2.0")(x, train=train)
    branch2 = conv(self.ch3x3, 3, padding=1, name="branch2.1")(branch2, train=train)
    branch3 = conv(self.ch5x5red, 1, name="branch3.0")(x, train=train)
    branch3 = conv(self.ch5x5, 3, padding=1, name="branch3.1")(branch3, train=train)
    branch4 = max_pool_ceil(x, 3, 1, padding=1)
    branch4 = conv(self.pool_proj, 1, name="branch4.1")(branch4, train=train)
    return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class _InceptionAux(nn.Module):
  """Auxiliary classifier: x [N, H, W, c] -> logits [N, num_classes]."""

  num_classes: int
  dropout: float = 0.7
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = adaptive_avg_pool(x, 4)
    x = _BasicConv2d(128, 1, dtype=self.dtype, conv=self.conv, norm=self.norm, name="conv")(
      x, train=train
    )
    # torch flattens NCHW (channel-major): fc1's 2048 inputs are ordered (c, h, w).
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    dense = functools.partial(nn.Dense, kernel_init=_normal, dtype=self.dtype)
    x = nn.relu(dense(1024, name="fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return dense(self.num_classes, name="fc2")(x)


class GoogLeNet(nn.Module):
  """GoogLeNet. `__call__(x [N, H, W, 3]) -> (logits [N, num_classes], out)`, H, W >= 15.

  Attributes:
    aux_logits: build the two auxiliary heads. They run only with train=True, where
      `out["aux1"]` and `out["aux2"]` hold their logits [N, num_classes] (train them with
      `googlenet_loss`); with train=False they are skipped, except that `init` always
      creates their variables, so weights with aux heads convert in either mode.
    transform_input: re-normalize images normalized with ImageNet's mean and std to
      (x - 0.5) / 0.5, as torchvision does for the pretrained weights (torchvision's
      default, and so ours, is False: `googlenet(weights=None)` leaves it off).
    dropout, dropout_aux: dropout before fc and after the aux heads' fc1 (torchvision's).
    num_classes: 0 builds neither fc nor the aux heads; `__call__` returns (None, out).
    conv: built as conv(features, (k, k), strides=, padding=, use_bias=False,
      kernel_init=, dtype=, name=).
    norm: built as norm(use_running_average=not train, dtype=, name=); None is
      torchvision's BatchNorm (eps 0.001).
    dtype: the computation dtype (bfloat16 for mixed precision).

  `out` names every stage: conv1, maxpool1, conv2, conv3, maxpool2 (= stem), inception3a,
  inception3b, maxpool3, inception4a..4e, maxpool4, inception5a, inception5b, pre_logits
  [N, 1024], logits, and with train=True and aux_logits, aux1 and aux2.
  """

  num_classes: int = 1000
  aux_logits: bool = True
  transform_input: bool = False
  dropout: float = 0.2
  dropout_aux: float = 0.7
  dtype: Any = jnp.float32
  conv: ModuleDef = Conv
  norm: ModuleDef | None = None

  @property
  def feature_strides(self) -> dict[str, int]:
    """{name: stride in input pixels} of the spatial maps in `out`."""
    return dict(_STRIDES)

  def min_size(self) -> int:
    """15: maxpool3 needs 2 rows, and 15 -> conv1 8 -> maxpool1 4 -> maxpool2 2."""
    return 15

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    check_num_classes(self.num_classes, "GoogLeNet")
    check_images(x, model="GoogLeNet", channels=3, min_size=self.min_size())
    x = x.astype(self.dtype)
    if self.transform_input:
      std = jnp.array([0.229, 0.224, 0.225], self.dtype)
      mean = jnp.array([0.485, 0.456, 0.406], self.dtype)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    modules = {"dtype": self.dtype, "conv": self.conv, "norm": self.norm}
    conv = functools.partial(_BasicConv2d, **modules)
    out = {}
    x = out["conv1"] = conv(64, 7, strides=2, padding=3, name="conv1")(x, train=train)
    x = out["maxpool1"] = max_pool_ceil(x, 3, 2)
    x = out["conv2"] = conv(64, 1, name="conv2")(x, train=train)
    x = out["conv3"] = conv(192, 3, padding=1, name="conv3")(x, train=train)
    x = out["maxpool2"] = out["stem"] = max_pool_ceil(x, 3, 2)
    run_aux = self.aux_logits and self.num_classes and (train or self.is_initializing())
    for stage in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
      name = f"inception{stage}"
      x = out[name] = _Inception(*_INCEPTION[stage], **modules, name=name)(x, train=train)
      aux = {"4a": "aux1", "4d": "aux2"}.get(stage)
      if aux and run_aux:
        head = _InceptionAux(self.num_classes, self.dropout_aux, **modules, name=aux)
        logits = head(x, train=train)
        if train:
          out[aux] = logits
      if stage == "3b":
        x = out["maxpool3"] = max_pool_ceil(x, 3, 2)
      elif stage == "4e":
        x = out["maxpool4"] = max_pool_ceil(x, 2, 2)
    x = out["pre_logits"] = x.mean(axis=(1, 2))
    if not self.num_classes:
      return None, out
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = out["logits"] = nn.Dense(
      self.num_classes, kernel_init=_normal, dtype=self.dtype, name="fc"
    )(x)
    return logits, out


def googlenet_loss(outputs, batch, *, aux_weight: float = 0.3) -> dict:
  """The paper's training loss; `outputs` = (logits [B, K], out), batch["label"] [B] int.

  loss = CE(logits) + aux_weight * (CE(out["aux1"]) + CE(out["aux2"])), the auxiliary
  terms only where `out` holds them (a train=True forward with aux_logits). Returns
  {"loss", "accuracy" (of the main logits), "aux1_loss", "aux2_loss" (0 when absent)}.
  """
  logits, out = outputs
  if logits is None:
    raise ValueError(
      "googlenet_loss: the model returned no logits (built with num_classes=0, a backbone); "
      "build it with num_classes >= 1 to train a classifier."
    )
  labels = batch["label"]

  def cross_entropy(z):
    return optax.softmax_cross_entropy_with_integer_labels(z.astype(jnp.float32), labels).mean()

  main = cross_entropy(logits)
  aux = {k: cross_entropy(out[k]) if k in out else jnp.zeros(()) for k in ("aux1", "aux2")}
  return {
    "loss": main + aux_weight * (aux["aux1"] + aux["aux2"]),
    "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean(),
    "aux1_loss": aux["aux1"],
    "aux2_loss": aux["aux2"],
  }
