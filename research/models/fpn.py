"""Feature Pyramid Network (Lin et al. 2017), torchvision's `ops.FeaturePyramidNetwork`.

The detectors' neck: from a backbone's maps C2..C5 (strides 4..32), one map per level
with the same number of channels, each mixing its own level with all coarser ones:

    inner_blocks.{i}.0   1x1 conv, C_i -> out_channels        lateral
    top-down             last = lateral_i + nearest(last, size of lateral_i)
    layer_blocks.{i}.0   3x3 conv pad 1 on last -> P_i        output
    pool                 max pool kernel 1 stride 2 of the coarsest P (LastLevelMaxPool)

starting from the coarsest level, whose `last` is its lateral alone. Module names are
torchvision's (>= 0.13, where each block is a Conv2dNormActivation, hence the ".0"), so
`research.convert.torchvision.convert` maps `fpn.inner_blocks.0.0.weight` and the rest,
and convs are initialized as torchvision's: kaiming_uniform_(a=1) (uniform with variance
1 / fan_in) and zero biases.

Nearest upsampling is torch's F.interpolate(size=..., mode="nearest"): output pixel i
reads input floor(i * in / out) (in float32, as torch computes it), which for odd sizes
(13 -> 25) is not the even 2x repetition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.layers import Conv

ModuleDef = Any

# torchvision's kaiming_uniform_(a=1): gain sqrt(2 / (1 + a^2)) = 1, bound sqrt(3 / fan_in).
_kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """torch's nearest source index of each of `out_size` outputs: [out_size] int."""
  if out_size == in_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(index, in_size - 1)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """x [N, h, w, C] -> [N, H, W, C] as torch's F.interpolate(size=(H, W), mode="nearest")."""
  rows = nearest_indices(x.shape[1], size[0])
  cols = nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


class FeaturePyramidNetwork(nn.Module):
  """FPN: {name: [N, H_i, W_i, C_i]} -> {name: [N, H_i, W_i, out_channels]} (+ "pool").

  `__call__(features, *, train=False)`; train is unused (no batch norm, no dropout) and
  accepted so that the FPN is called as every model is.

  Attributes:
    in_channels_list: C_i of each input map, highest resolution first.
    out_channels: the channels of every output map (256 in torchvision's detectors).
    extra_blocks: "pool" adds torchvision's LastLevelMaxPool, out["pool"] [N, ceil(H_last /
      2), ceil(W_last / 2), out_channels]; None adds nothing.
    conv: the conv module (flax's examples/imagenet `conv: ModuleDef`).
    dtype: the computation dtype (bfloat16 for mixed precision); parameters stay float32.

  The input maps are read in the dict's order, which must run from the highest resolution
  to the lowest, as torchvision's OrderedDict. JAX sorts a dict's keys when it passes
  through `jax.jit` or any transformation, so name the maps such that the sorted order is
  the resolution order (torchvision's "0", "1", "2", "3"); a wrong order is a ValueError.
  The output dict has the input's keys in the input's order, then "pool".
  """

  in_channels_list: Sequence[int]
  out_channels: int
  extra_blocks: str | None = "pool"
  conv: ModuleDef = Conv
  dtype: Any = jnp.float32

  def _check(self, features) -> None:
    name = type(self).__name__
    if self.extra_blocks not in ("pool", None):
      raise ValueError(
        f"{name}: extra_blocks must be 'pool' or None; received {self.extra_blocks!r}."
      )
    if any(c < 1 for c in self.in_channels_list):
      raise ValueError(
        f"{name}: in_channels_list must be positive; received {self.in_channels_list}."
      )
    if not isinstance(features, Mapping):
      raise ValueError(
        f"{name}: features must be a dict of [N, H, W, C] maps; received {type(features).__name__}."
      )
    shapes = {k: tuple(v.shape) for k, v in features.items()}
    channels = [s[-1] if len(s) == 4 else None for s in shapes.values()]
    if channels != list(self.in_channels_list):
      raise ValueError(
        f"{name}: features must be {len(self.in_channels_list)} maps [N, H, W, C] with C in "
        f"{list(self.in_channels_list)}; received shapes {shapes}."
      )
    names = list(shapes)
    for fine, coarse in zip(names, names[1:]):
      if any(c > f for f, c in zip(shapes[fine][1:3], shapes[coarse][1:3])):
        raise ValueError(
          f"{name}: features must run from the highest resolution to the lowest; received "
          f"{coarse!r} {shapes[coarse][1:3]} after {fine!r} {shapes[fine][1:3]} (under jax.jit "
          "a dict's keys are sorted: name the maps '0', '1', ... from fine to coarse)."
        )

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool = False):
    del train
    self._check(features)
    conv = lambda k, name: self.conv(  # noqa: E731
      self.out_channels,
      (k, k),
      padding=k // 2,
      kernel_init=_kaiming_uniform_a1,
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      name=name,
    )
    names = list(features)
    maps = [features[k].astype(self.dtype) for k in names]
    last = len(maps) - 1
    inner = conv(1, f"inner_blocks.{last}.0")(maps[last])
    results = [conv(3, f"layer_blocks.{last}.0")(inner)]
    for i in range(last - 1, -1, -1):
      lateral = conv(1, f"inner_blocks.{i}.0")(maps[i])
      inner = lateral + upsample_nearest(inner, lateral.shape[1:3])
      results.insert(0, conv(3, f"layer_blocks.{i}.0")(inner))
    out = dict(zip(names, results, strict=True))
    if self.extra_blocks == "pool":
      # torchvision's F.max_pool2d(kernel_size=1, stride=2): every other pixel.
      out["pool"] = results[-1][:, ::2, ::2]
    return out
