"""Layers shared by the models, and the one place where their convolutions are computed.

Every convolution of LeNet-5, AlexNet, ZFNet, VGG, ResNet, DenseNet, GoogLeNet and the FPN
goes through `conv_general_dilated` (via `Conv`). On a CPU backend it runs on
oneDNN's primitives (research.ops.onednn) when that extension builds and loads
here; otherwise, on GPUs and TPUs, and with RESEARCH_CONV=lax, it is
`lax.conv_general_dilated` (on the CPU with the per-image weight gradient of
research.ops.conv_grad). One log line says which path runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

try:  # enum_state: no public API defines a configuration state of one's own
  from jax._src.config import enum_state as _enum_state
except ImportError:  # a JAX that moved it: a process-wide value, set before the first trace
  _enum_state = None

from research.ops import conv_grad, onednn

NHWC = conv_grad.NHWC
PATHS = ("auto", "onednn", "lax")
_logged: set[str] = set()
_log = logging.getLogger(__name__)


def _log_once(level: int, message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    _log.log(level, message)


def _env_path() -> str:
  value = os.environ.get("RESEARCH_CONV", "auto")
  if value not in PATHS:
    _log_once(logging.WARNING, f"RESEARCH_CONV: expected one of {PATHS}; received {value!r}.")
    return "auto"
  return value


# A JAX configuration state that is part of the trace context, so that jit caches keep
# programs traced on each path apart: `jax.config.update("research_conv_path", "lax")`
# sets it for the process, `use_conv_path` for a block.
class _ProcessPath:
  """The fallback of `_PATH` where JAX has no `enum_state`: one value for the process;
  functions jitted before a change keep the path they were traced with."""

  def __init__(self, value: str):
    self.value = value

  @contextlib.contextmanager
  def __call__(self, value: str):
    before, self.value = self.value, value
    try:
      yield
    finally:
      self.value = before


if _enum_state is not None:
  _PATH = _enum_state(
    "research_conv_path",
    PATHS,
    default=_env_path(),
    help="Convolutions of research.models: auto (oneDNN on the CPU where it runs), onednn, lax.",
    include_in_jit_key=True,
    include_in_trace_context=True,
  )
else:
  _PATH = _ProcessPath(_env_path())


def use_conv_path(path: str):
  """Context manager: convolutions traced within take `path` ("auto", "onednn" or "lax"),
  whatever RESEARCH_CONV says."""
  if path not in PATHS:
    raise ValueError(f"path: expected one of {PATHS}; received {path!r}.")
  return _PATH(path)


def conv_path() -> str:
  """Which path ("onednn" or "lax") the CPU convolutions traced now take (logged once).

  `use_conv_path` or `jax.config.update("research_conv_path", ...)`, else
  $RESEARCH_CONV ("auto" by default: oneDNN where the extension is available and the
  default backend is the CPU).
  """
  choice = _PATH.value
  if choice == "lax":
    _log_once(logging.INFO, "Convolutions: lax (RESEARCH_CONV=lax).")
    return "lax"
  backend = jax.default_backend()
  if backend != "cpu":
    _log_once(logging.INFO, f"Convolutions: lax (default backend {backend}).")
    return "lax"
  available, description = onednn.status()
  if not available:
    _log_once(logging.WARNING, f"Convolutions: lax; oneDNN is not available: {description}")
    return "lax"
  _log_once(logging.INFO, f"Convolutions on the CPU: {description} (RESEARCH_CONV=lax: lax).")
  return "onednn"


def _pair(value) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """`lax.conv_general_dilated`, computed by oneDNN on the CPU (`conv_path()`).

  Plain 2-D convolutions, lhs [N, H, W, C] float32 with rhs [kh, kw, C / groups, F]
  float32 -> [N, oh, ow, F] (NHWC/HWIO, any stride, padding >= 0, dilation, groups),
  take oneDNN on a CPU backend, lax elsewhere (`lax.platform_dependent`: a GPU or TPU
  program holds no custom call). Where oneDNN does not run, plain ungrouped undilated
  ones take lax with the per-image weight gradient (`research.ops.conv_grad`); any other
  call (other dtypes, layouts, input dilation, ...) is lax unchanged. Reverse mode only
  (no jvp) on both special paths.
  """
  plain = (
    lhs.ndim == 4
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    and batch_group_count == 1
    and preferred_element_type is None
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
  )
  pads = None
  if plain:
    strides = tuple(window_strides)
    dilation = tuple(rhs_dilation or (1, 1))
    if isinstance(padding, str):
      window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
      padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if conv_path() == "onednn":
      if lhs.dtype == rhs.dtype == jnp.float32:
        geometry = onednn.plan(lhs.shape, rhs.shape, strides, pads, dilation, feature_group_count)
      else:
        geometry = f"dtypes {lhs.dtype} and {rhs.dtype}, not float32"
      if not isinstance(geometry, str):
        return lax.platform_dependent(
          lhs,
          rhs,
          cpu=lambda x, w: onednn.convolution.conv(
            x[:, : geometry.in_hw[0], : geometry.in_hw[1]], w, geometry
          ),
          default=lambda x, w: _lax(x, w, strides, pads, dilation, feature_group_count, precision),
        )
      _log_once(logging.INFO, f"Convolution on lax, not oneDNN: {geometry}.")
    return _lax(lhs, rhs, strides, pads, dilation, feature_group_count, precision)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def _lax(x, w, strides, pads, dilation, groups, precision):
  """The lax path of an NHWC/HWIO convolution: the per-image weight gradient where it
  applies (no groups, no dilation, padding >= 0), else lax unchanged."""
  if groups == 1 and dilation == (1, 1) and all(p >= 0 for pair in pads for p in pair):
    return conv_grad.conv2d(x, w, strides, pads, precision)
  return lax.conv_general_dilated(
    x,
    w,
    strides,
    pads,
    rhs_dilation=dilation,
    dimension_numbers=NHWC,
    feature_group_count=groups,
    precision=precision,
  )


class Conv(nn.Conv):
  """`nn.Conv` (same parameters, initialization and results) for NHWC images whose
  convolution is `conv_general_dilated` (oneDNN on the CPU), with unpadded 1x1 kernels
  computed as a matrix product over channels on the lax path.

  XLA:CPU runs 1x1 convolutions far below its matmul speed (measured on two
  cores: 16x56x56x256 -> 64 at 32 GFLOP/s as a convolution, 173 as a matmul;
  their gradients at 14 and 73), and ResNet-50, DenseNet and GoogLeNet are
  mostly 1x1 convolutions. A strided 1x1 kernel reads every s-th pixel.
  """

  conv_general_dilated: Any = conv_general_dilated

  @nn.compact
  def __call__(self, inputs):
    pointwise = (
      _pair(self.kernel_size) == (1, 1)
      and self.padding in (0, "VALID", ((0, 0), (0, 0)))
      and self.feature_group_count == 1
      and _pair(self.kernel_dilation or 1) == (1, 1)
      and _pair(self.input_dilation or 1) == (1, 1)
      and inputs.ndim == 4
    )
    dtype = self.dtype or jnp.result_type(inputs.dtype, self.param_dtype)
    if not pointwise or (conv_path() == "onednn" and dtype == jnp.float32):
      return super().__call__(inputs)
    shape = (1, 1, inputs.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    sh, sw = _pair(self.strides or 1)
    x = inputs[:, ::sh, ::sw]
    y = lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=self.precision)
    return y if bias is None else y + bias
