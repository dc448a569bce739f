"""Receptive fields read off the traced model: which input pixels a unit of a layer can see.

A unit i of a layer sees input rows [start + i * jump, start + i * jump + size)
(and likewise columns); every convolution or pool with kernel k, stride s and
padding p below it turns (jump, size, start) into (jump * s, size + (k - 1) * jump,
start - p * jump). The walk follows the traced program, so it needs no
description of the model, and it does not look at the deconvnet: the test that
projections stay inside receptive fields compares two independent computations.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.extend import core

from research.interpret import graph


@dataclasses.dataclass(frozen=True)
class Field:
  """Per spatial axis (rows, columns): jump, size and start of the units' windows.

  `whole` is True when a unit sees the whole image (after a dense layer).
  """

  jump: tuple[int, int] = (1, 1)
  size: tuple[int, int] = (1, 1)
  start: tuple[int, int] = (0, 0)
  whole: bool = False

  def window(self, k, s, p) -> Field:
    return Field(
      tuple(j * si for j, si in zip(self.jump, s, strict=True)),
      tuple(r + (ki - 1) * j for r, ki, j in zip(self.size, k, self.jump, strict=True)),
      tuple(a - pi * j for a, pi, j in zip(self.start, p, self.jump, strict=True)),
    )

  def union(self, other: Field) -> Field:
    if self.whole or other.whole or self.jump != other.jump:
      return Field(whole=True)
    lo = tuple(min(a, b) for a, b in zip(self.start, other.start, strict=True))
    hi = tuple(
      max(a + r, b + q)
      for a, r, b, q in zip(self.start, self.size, other.start, other.size, strict=True)
    )
    return Field(self.jump, tuple(h - lo_ for h, lo_ in zip(hi, lo, strict=True)), lo)

  def box(self, row: int, col: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), the unit's window in input pixels, y1/x1 exclusive, not clipped."""
    if self.whole:
      return 0, 0, image_size[0], image_size[1]
    y0 = self.start[0] + row * self.jump[0]
    x0 = self.start[1] + col * self.jump[1]
    return y0, x0, y0 + self.size[0], x0 + self.size[1]


def _spatial_window(eqn: core.JaxprEqn):
  """(kernel, stride, padding low) over the two spatial axes of a conv or pool, else None."""
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    p = eqn.params
    if any(d != 1 for d in (*p["lhs_dilation"], *p["rhs_dilation"])):
      return None
    rhs_spec = p["dimension_numbers"].rhs_spec
    kernel = tuple(eqn.invars[1].aval.shape[d] for d in rhs_spec[2:])
    padding = p["padding"]
    return kernel, tuple(p["window_strides"]), tuple(lo for lo, _ in padding)
  if name.startswith("reduce_window"):
    p = eqn.params
    dims, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
    spatial = [d for d in range(len(dims)) if dims[d] > 1 or strides[d] > 1]
    if len(dims) != 4 or any(d not in (1, 2) for d in spatial):
      return None
    return tuple(dims[1:3]), tuple(strides[1:3]), tuple(padding[d][0] for d in (1, 2))
  return None


def _walk(closed: core.ClosedJaxpr, fields: list) -> list:
  env: dict = {}

  def read(v):
    return None if isinstance(v, core.Literal) else env.get(v)

  for var, f in zip(closed.jaxpr.invars, fields, strict=True):
    env[var] = f
  for eqn in closed.jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    found = [f for f in ins if f is not None]
    if not found:
      continue
    sub = graph.body(eqn)
    if sub is not None:
      outs = _walk(sub, ins)
    else:
      field = found[0]
      for f in found[1:]:
        field = field.union(f)
      window = _spatial_window(eqn)
      if window is not None and not field.whole:
        field = field.window(*window)
      elif eqn.primitive.name in ("dot_general", "reshape", "reduce_sum", "reduce_max"):
        # A dense layer or a flatten mixes every position: units see the whole image.
        if eqn.primitive.name != "reshape" or _mixes_spatial(eqn):
          field = Field(whole=True)
      outs = [field] * len(eqn.outvars)
    for var, f in zip(eqn.outvars, outs, strict=True):
      env[var] = f
  return [read(v) for v in closed.jaxpr.outvars]


def _mixes_spatial(eqn: core.JaxprEqn) -> bool:
  # A reshape that keeps the batch, height and width axes (e.g. a bias to [1, 1, 1, C]) does not.
  before, after = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
  return len(before) != 4 or len(after) != 4 or before[:3] != after[:3]


def receptive_field(model, variables, image_shape: tuple[int, int, int], layer: str) -> Field:
  """The receptive-field geometry of `layer`'s units for images `[H, W, C]` = image_shape."""
  graph.check_layer(model, variables, image_shape, layer)
  closed = graph.trace(
    lambda x: model.apply(variables, x)[1][layer], jnp.zeros((1, *image_shape), jnp.float32)
  )
  (field,) = _walk(closed, [Field()])
  return field if field is not None else Field(whole=True)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
  """`image[y0:y1, x0:x1]` for a box that may reach past the image, zero-padded outside.

  image: [H, W, C]; returns [y1 - y0, x1 - x0, C].
  """
  y0, x0, y1, x1 = box
  h, w = image.shape[:2]
  out = np.zeros((y1 - y0, x1 - x0, *image.shape[2:]), image.dtype)
  sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
  if sy1 > sy0 and sx1 > sx0:
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
  return out
