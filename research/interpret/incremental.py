"""Incremental inference: re-run a model on many copies of one image that differ in a window.

An occluder changes a small square of the image; a convolution or pool then
changes only the units whose windows reach it, an elementwise layer only the
units that changed, and so on up the network until the change has spread over
the whole map (Nakandala et al. 2019 did this for occlusion explanations).
This module evaluates the traced program of a model that way, exactly:

- A value that depends on the occluded input and differs from the clean
  image's value only in a window is a `Patch`: the clean value `base`
  [1, H, W, ...], the window's values `dirty` [N, h, w, ...] for the N occluded
  copies, and each copy's window corner `origin` [N, 2]. Window sizes are
  static (the largest a change can reach), corners are traced, so one
  compiled program serves every occluder position.
- A convolution or pool of a Patch computes only its output window, from an
  input region cut out of the clean value with the copy's window pasted in.
  Elementwise and channel-only operations act on the windows.
- Anything else (a dense layer, a flatten, a reshape) first writes the
  windows into the clean values (`dense`) and runs on the N full copies under
  `vmap`, so every program gives exact results; the savings are wherever the
  rules above apply.

Values are laid out NHWC (Flax's default): axes 1 and 2 are the spatial ones.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from research.interpret import graph

ELEMENTWISE = frozenset(
  """abs add atan2 ceil clamp convert_element_type cos div erf erf_inv exp exp2 expm1 floor
  integer_pow is_finite log log1p logistic max min mul ne eq ge gt le lt neg not and or pow
  round rsqrt select_n sign sin sqrt square sub tan tanh""".split()
)


@dataclasses.dataclass(frozen=True)
class Patch:
  """A batch of N values equal to `base` outside each copy's window.

  base: [1, H, W, ...]; dirty: [N, h, w, ...]; origin: [N, 2] int32 (row, col).
  `key` identifies the window geometry: Patches with the same key have the
  same windows, so elementwise operations can combine their `dirty` arrays.
  """

  base: jax.Array
  dirty: jax.Array
  origin: jax.Array
  key: object


@dataclasses.dataclass(frozen=True)
class Batched:
  """N full values: [N, 1, H, W, ...]."""

  value: jax.Array


def dense(x):
  """A Patch or Batched as [N, *base.shape]; other values unchanged."""
  if isinstance(x, Batched):
    return x.value
  if not isinstance(x, Patch):
    return x
  zeros = (0,) * (x.base.ndim - 3)

  def paste(dirty, origin):
    return lax.dynamic_update_slice(x.base[0], dirty, (origin[0], origin[1], *zeros))

  return jax.vmap(paste)(x.dirty, x.origin)[:, None]


def _window_size(n, d, k, s, lo, m) -> int:
  """The most output units of a k/s window op (padding lo, output size m) that a
  changed input run of length d can reach, over all alignments of the run."""
  reach = 0
  for t in range(lo, lo + s):
    first = -((k - 1 - t) // s)  # ceil((t - k + 1) / s)
    last = (t + d - 1) // s
    reach = max(reach, last - first + 1)
  return min(m, reach)


def _region(x: Patch, kernel, strides, padding, out_hw, fill):
  """Each copy's input region for the output window, and the window's corners.

  Returns (regions [N, R0, R1, ...], out_origin [N, 2], out window (D0, D1)).
  """
  d = x.dirty.shape[1:3]
  n = x.base.shape[1:3]
  sizes = tuple(
    _window_size(n[a], d[a], kernel[a], strides[a], padding[a][0], out_hw[a]) for a in range(2)
  )
  first = jnp.stack(
    [-((kernel[a] - 1 - x.origin[:, a] - padding[a][0]) // strides[a]) for a in range(2)], -1
  )
  out_origin = jnp.clip(first, 0, jnp.asarray([out_hw[0] - sizes[0], out_hw[1] - sizes[1]]))
  region = tuple((sizes[a] - 1) * strides[a] + kernel[a] for a in range(2))
  rest = [(0, 0)] * (x.base.ndim - 3)
  padded = jnp.pad(x.base[0], [*padding, *rest], constant_values=fill)
  zeros = (0,) * (x.base.ndim - 3)

  def cut(dirty, origin, corner):
    start = corner * jnp.asarray(strides)
    base = lax.dynamic_slice(padded, (start[0], start[1], *zeros), (*region, *padded.shape[2:]))
    # Paste the copy's window where it falls in the region; margins of d on each side
    # keep dynamic_update_slice from clamping a window that sticks out.
    canvas = jnp.pad(base, [(d[0], d[0]), (d[1], d[1]), *rest])
    at = jnp.clip(
      origin + jnp.asarray([padding[0][0], padding[1][0]]) - start,
      -jnp.asarray(d),
      jnp.asarray(region),
    )
    mask = jnp.pad(jnp.zeros(base.shape, bool), [(d[0], d[0]), (d[1], d[1]), *rest])
    ones = jnp.ones(dirty.shape, bool)
    canvas = lax.dynamic_update_slice(canvas, dirty, (at[0] + d[0], at[1] + d[1], *zeros))
    mask = lax.dynamic_update_slice(mask, ones, (at[0] + d[0], at[1] + d[1], *zeros))
    # Where the pasted window overlaps the margins it is outside the region: drop it.
    inner = (slice(d[0], d[0] + region[0]), slice(d[1], d[1] + region[1]))
    return jnp.where(mask[inner], canvas[inner], base)

  return jax.vmap(cut)(x.dirty, x.origin, out_origin), out_origin, sizes


def _conv(eqn, lhs: Patch, rhs):
  p = eqn.params
  dn = p["dimension_numbers"]
  if (
    tuple(dn.lhs_spec) != (0, 3, 1, 2)
    or tuple(dn.out_spec) != (0, 3, 1, 2)
    or any(v != 1 for v in (*p["lhs_dilation"], *p["rhs_dilation"]))
    or p["batch_group_count"] != 1
  ):
    return None
  kernel = tuple(rhs.shape[a] for a in dn.rhs_spec[2:])
  out_hw = eqn.outvars[0].aval.shape[1:3]
  regions, origin, sizes = _region(lhs, kernel, p["window_strides"], p["padding"], out_hw, 0.0)
  # The region holds exactly the inputs of the window: an unpadded ("VALID") convolution.
  # XLA:CPU runs unpadded convolutions 2-4x slower than padded ones (measured: 64x12x12x384,
  # 3x3 -> 256: 0.31 s unpadded, 0.11 s with one zero column), so pad one column and drop
  # the output column it adds.
  params = dict(p, padding=((0, 0), (0, 1)))
  dirty = lax.conv_general_dilated_p.bind(regions, rhs, **params)[:, :, : sizes[1]]
  base = graph.bind(eqn, [lhs.base, rhs])[0]
  return Patch(base, dirty, origin, object())


def _pool(eqn, x: Patch):
  p = eqn.params
  dims, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
  if (
    x.base.ndim != 4
    or (dims[0], dims[3], strides[0], strides[3]) != (1, 1, 1, 1)
    or any(padding[a] != (0, 0) for a in (0, 3))
    or any(v != 1 for v in (*p["base_dilation"], *p["window_dilation"]))
  ):
    return None
  fill = -jnp.inf if eqn.primitive.name == "reduce_window_max" else 0.0
  out_hw = eqn.outvars[0].aval.shape[1:3]
  regions, origin, _ = _region(x, dims[1:3], strides[1:3], padding[1:3], out_hw, fill)
  params = dict(p, padding=((0, 0),) * 4)
  dirty = eqn.primitive.bind(regions, **params)
  base = graph.bind(eqn, [x.base])[0]
  return Patch(base, dirty, origin, object())


def _slice_clean(value, like: Patch):
  """A clean operand as the window's values: scalars and [.., 1, 1, ..] broadcast as they
  are; a full-size one is cut at each copy's window; None for anything else."""
  if jnp.ndim(value) == 0:
    return value
  shape = jnp.shape(value)
  if len(shape) == like.base.ndim and shape[1] == shape[2] == 1:
    return value
  if shape == like.base.shape:
    size = like.dirty.shape[1:]
    zeros = (0,) * (len(shape) - 3)
    return jax.vmap(lambda o: lax.dynamic_slice(value[0], (o[0], o[1], *zeros), size))(like.origin)
  return None


def _elementwise(eqn, invals):
  patches = [v for v in invals if isinstance(v, Patch)]
  if len({id(p.key) for p in patches}) != 1:
    return None
  like = patches[0]
  dirty_in, base_in = [], []
  for v in invals:
    if isinstance(v, Patch):
      dirty_in.append(v.dirty)
      base_in.append(v.base)
    else:
      cut = _slice_clean(v, like)
      if cut is None:
        return None
      dirty_in.append(cut)
      base_in.append(v)
  out = eqn.primitive.bind(*dirty_in, **eqn.params)
  base = eqn.primitive.bind(*base_in, **eqn.params)
  return Patch(base, out, like.origin, like.key)


def _channels_only(eqn, invals):
  """pad, slice and concatenate along axes >= 3 act on windows as they do on full maps."""
  name, p = eqn.primitive.name, eqn.params
  x = invals[0]
  if name == "pad":
    if isinstance(invals[1], Patch) or any(tuple(c) != (0, 0, 0) for c in p["padding_config"][:3]):
      return None
    return Patch(
      graph.bind(eqn, [x.base, invals[1]])[0],
      graph.bind(eqn, [x.dirty, invals[1]])[0],
      x.origin,
      x.key,
    )
  if not all(isinstance(v, Patch) for v in invals) or len({id(v.key) for v in invals}) != 1:
    return None
  if name == "slice":
    start, limit = p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * len(start)
    full = x.base.shape
    if any(start[a] != 0 or limit[a] != full[a] or strides[a] != 1 for a in range(3)):
      return None
    d = x.dirty.shape
    params = dict(p, limit_indices=(d[0], d[1], d[2], *limit[3:]))
    return Patch(
      graph.bind(eqn, [x.base])[0], eqn.primitive.bind(x.dirty, **params), x.origin, x.key
    )
  if name == "concatenate" and p["dimension"] >= 3:
    base = eqn.primitive.bind(*[v.base for v in invals], **p)
    return Patch(base, eqn.primitive.bind(*[v.dirty for v in invals], **p), x.origin, x.key)
  return None


def _batched(eqn, invals):
  axes = [0 if isinstance(v, Batched | Patch) else None for v in invals]
  values = [dense(v) for v in invals]
  out = jax.vmap(lambda *args: graph.bind(eqn, list(args)), in_axes=axes)(*values)
  return [Batched(v) for v in out]


def _rule(eqn, invals):
  if not any(isinstance(v, Patch | Batched) for v in invals):
    return graph.bind(eqn, invals) if graph.body(eqn) is None else None
  if graph.body(eqn) is not None:
    return evaluate(graph.body(eqn), invals)
  if not any(isinstance(v, Batched) for v in invals):
    name = eqn.primitive.name
    out = None
    if name == "conv_general_dilated" and isinstance(invals[0], Patch):
      if not isinstance(invals[1], Patch):
        out = _conv(eqn, invals[0], invals[1])
    elif name in ("reduce_window_max", "reduce_window_sum"):
      out = _pool(eqn, invals[0])
    elif name in ELEMENTWISE:
      out = _elementwise(eqn, invals)
    elif name in ("pad", "slice", "concatenate"):
      out = _channels_only(eqn, invals)
    if out is not None:
      return [out]
  return _batched(eqn, invals)


def evaluate(closed: core.ClosedJaxpr, args: list, consts: list | None = None) -> list:
  """Evaluates `closed` on Patch / Batched / plain arguments; outputs in the same kinds."""
  return graph.evaluate(closed, args, _rule, consts)


def occluded(closed: core.ClosedJaxpr, consts: list, image, dirty, origin) -> list:
  """A traced model on N copies of `image` whose windows at `origin` are replaced by `dirty`.

  closed: the program of a function of images [1, H, W, C] (`graph.trace`);
  consts: its constants (e.g. `closed.consts`, or the same passed through a
  jit as arguments); image: [H, W, C]; dirty: [N, h, w, C]; origin: [N, 2] int
  (row, col), windows inside the image. Returns the function's outputs for the
  N copies, each [N, *output shape[1:]].
  """
  patch = Patch(image[None], dirty, jnp.asarray(origin, jnp.int32), object())
  outs = evaluate(closed, [patch], consts)
  n = dirty.shape[0]
  results = []
  for o in outs:
    if isinstance(o, Patch | Batched):
      o = dense(o)
      results.append(jnp.reshape(o, (n, *o.shape[2:])))
    else:  # An output the occluder cannot reach.
      results.append(jnp.broadcast_to(o, (n, *jnp.shape(o)[1:])))
  return results
