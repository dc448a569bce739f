"""Max, average and adaptive average pooling, and the translation invariance they buy.

Images are NHWC: x is [N, H, W, C] or a single image [H, W, C]. Windows,
strides and paddings are an int or a pair (rows, cols); they set shapes, so
under `jax.jit` they must be static. Output sizes follow
`research.ops.conv.output_size` (floor mode, torch's `ceil_mode=False`).

Every model's max pool goes through `max_pool`. Its gradient on a CPU is not XLA's
select-and-scatter (which XLA:CPU expands into an index reduction and a scatter, 3-7x
slower than torch's pooling backward) but one comparison a window position: the
gradient goes to the first maximum of each window in row-major order, as in torch and
lax. Other backends keep lax's own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops.conv import _pair

__all__ = ["max_pool", "avg_pool", "adaptive_avg_pool", "shift_invariance"]


def _as_batch(x, fn: str):
  """x [N, H, W, C] or [H, W, C] -> ([N, H, W, C], whether a batch axis was added)."""
  x = jnp.asarray(x)
  if x.ndim == 3:
    return x[None], True
  if x.ndim == 4:
    return x, False
  raise ValueError(f"{fn}: x must be [N, H, W, C] or [H, W, C], got shape {x.shape}")


def _window_args(x, window, stride, padding, fn: str):
  """-> (window, stride, ((top, bottom), (left, right))) after checking them against x.

  padding: an int or (rows, cols), at most half the window (torch's rule: more would
  give windows that see only padding, outputs that carry nothing from x); or explicit
  ((top, bottom), (left, right)) sides, each below the window (ceil-mode pooling pads
  the bottom and right by up to window - 1).
  """
  window = _pair(window, "window", fn)
  stride = window if stride is None else _pair(stride, "stride", fn)
  if min(window) < 1:
    raise ValueError(f"{fn}: window must be >= 1, got window={window}")
  if min(stride) < 1:
    raise ValueError(f"{fn}: stride must be >= 1, got stride={stride}")
  sides = _sides(padding)
  if sides is None:
    padding = _pair(padding, "padding", fn)
    if min(padding) < 0 or padding[0] > window[0] // 2 or padding[1] > window[1] // 2:
      raise ValueError(
        f"{fn}: padding must be between 0 and half the window {window}, got padding={padding}"
      )
    sides = ((padding[0], padding[0]), (padding[1], padding[1]))
  elif any(not 0 <= p < k for k, pair in zip(window, sides) for p in pair):
    raise ValueError(
      f"{fn}: padding ((top, bottom), (left, right)) must have each side between 0 and "
      f"window - 1 for the window {window}, got padding={padding}"
    )
  h, w = x.shape[1:3]
  for n, k, (lo, hi) in zip((h, w), window, sides):
    if n + lo + hi < k:
      raise ValueError(
        f"{fn}: window {window} must fit in the padded input "
        f"({h + sum(sides[0])}, {w + sum(sides[1])}), got x of shape {x.shape} "
        f"with padding {padding}"
      )
  return window, stride, sides


def _sides(padding):
  """((top, bottom), (left, right)) as a tuple of int pairs, or None for an int/pair."""
  if not isinstance(padding, (tuple, list)) or len(padding) != 2:
    return None
  if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding):
    return None
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _reduce(x, init, op, window, stride, sides):
  return lax.reduce_window(
    x,
    init,
    op,
    window_dimensions=(1, *window, 1),
    window_strides=(1, *stride, 1),
    padding=((0, 0), *sides, (0, 0)),
  )


def max_pool(x, window, *, stride=None, padding=0) -> jax.Array:
  """Max over each window (padding never wins: it is -inf, as in torch).

  x: [N, H, W, C] or [H, W, C]; window, stride (default: window): int or (rows, cols);
  padding: int, (rows, cols) or ((top, bottom), (left, right)). Returns [N, oh, ow, C]
  or [oh, ow, C] with oh = (H + top + bottom - window_h) // stride_h + 1, likewise ow.
  """
  x, added = _as_batch(x, "max_pool")
  window, stride, sides = _window_args(x, window, stride, padding, "max_pool")
  if jnp.issubdtype(x.dtype, jnp.inexact):
    out = _max_pool(x, window, stride, sides)
  else:  # integers have no gradient to route
    out = _reduce(x, np.array(np.iinfo(x.dtype).min, x.dtype), lax.max, window, stride, sides)
  return out[0] if added else out


def _lax_max_pool(x, window, stride, sides):
  # A concrete init value: with a traced one lax cannot see a max, and has no gradient.
  return _reduce(x, np.array(-np.inf, x.dtype), lax.max, window, stride, sides)


_max_pool = jax.custom_vjp(_lax_max_pool, nondiff_argnums=(1, 2, 3))


def _max_pool_fwd(x, window, stride, sides):
  y = _max_pool(x, window, stride, sides)
  return y, (x, y)


def _max_pool_bwd(window, stride, sides, residuals, dy):
  x, y = residuals

  def lax_grad(x, y, dy):
    return jax.vjp(lambda v: _lax_max_pool(v, window, stride, sides), x)[1](dy)[0]

  def by_comparison(x, y, dy):
    return _max_pool_grad(x, y, dy, window, stride, sides)

  return (lax.platform_dependent(x, y, dy, cpu=by_comparison, default=lax_grad),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _max_pool_grad(x, y, dy, window, stride, sides):
  """The gradient of max pooling by comparisons, for x [N, H, W, C], y and dy [N, oh, ow, C].

  Window position (di, dj) sees the strided slice x_pad[:, di::sh, dj::sw], of y's shape;
  where it equals y and no earlier position did, it takes dy. Its pixels are the rows
  of phase di % sh (every sh-th row from di % sh) shifted by di // sh, and likewise for
  columns, so each position's share is added into its phase's grid at that shift, on
  arrays of the output's size, and the sh * sw phase grids are interleaved once at the
  end. Everything is elementwise: XLA fuses it into a few loops.
  """
  (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window, stride, sides
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  n, hp, wp, c = xp.shape
  oh, ow = y.shape[1:3]
  hq, wq = -(-hp // sh), -(-wp // sw)  # rows and columns of each phase grid
  zero = np.array(0, dy.dtype)
  taken = jnp.zeros(y.shape, bool)
  phases = {}
  for di in range(kh):
    for dj in range(kw):
      seen = lax.slice(
        xp, (0, di, dj, 0), (n, di + (oh - 1) * sh + 1, dj + (ow - 1) * sw + 1, c), (1, sh, sw, 1)
      )
      wins = (seen == y) & ~taken
      taken = taken | wins
      (a, t), (b, u) = divmod(di, sh)[::-1], divmod(dj, sw)[::-1]
      share = lax.pad(
        jnp.where(wins, dy, zero),
        zero,
        ((0, 0, 0), (t, hq - oh - t, 0), (u, wq - ow - u, 0), (0, 0, 0)),
      )
      phases[a, b] = phases[a, b] + share if (a, b) in phases else share
  empty = jnp.zeros((n, hq, wq, c), dy.dtype)  # phases no window reaches (stride > window)
  grid = jnp.stack(
    [jnp.stack([phases.get((a, b), empty) for b in range(sw)], axis=3) for a in range(sh)],
    axis=2,
  )  # [N, hq, sh, wq, sw, C]: row q * sh + a, column r * sw + b
  dxp = grid.reshape(n, hq * sh, wq * sw, c)
  return dxp[:, top : hp - bottom, left : wp - right]


def avg_pool(x, window, *, stride=None, padding=0) -> jax.Array:
  """Mean over each window; padded zeros count in the mean.

  Dividing by the full window size everywhere is torch's default
  `count_include_pad=True`, so border outputs are pulled towards zero.

  x: [N, H, W, C] or [H, W, C]; window, stride (default: window), padding: int
  or (rows, cols). Returns [N, oh, ow, C] or [oh, ow, C].
  """
  x, added = _as_batch(x, "avg_pool")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.float32)
  window, stride, sides = _window_args(x, window, stride, padding, "avg_pool")
  out = _reduce(x, np.array(0, x.dtype), lax.add, window, stride, sides)
  out = out / (window[0] * window[1])
  return out[0] if added else out


def _adaptive_bins(n: int, m: int) -> list[tuple[int, int]]:
  """torch's bins: bin i covers [floor(i*n/m), ceil((i+1)*n/m))."""
  return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def _adaptive_mean_axis(x, axis: int, m: int):
  n = x.shape[axis]
  if n % m == 0:
    # Equal, disjoint bins: split the axis into (m, n // m) and average.
    shape = x.shape[:axis] + (m, n // m) + x.shape[axis + 1 :]
    return x.reshape(shape).mean(axis=axis + 1)
  # Uneven (possibly overlapping) bins: a static [m, n] averaging matrix. The
  # mean over a rectangular bin is the row mean of the column means, so the two
  # spatial axes can be treated one after the other.
  weights = np.zeros((m, n), np.float32)
  for i, (start, end) in enumerate(_adaptive_bins(n, m)):
    weights[i, start:end] = 1.0 / (end - start)
  out = jnp.tensordot(
    jnp.asarray(weights, x.dtype), x, axes=((1,), (axis,)), precision=lax.Precision.HIGHEST
  )
  return jnp.moveaxis(out, 0, axis)


def adaptive_avg_pool(x, output_size) -> jax.Array:
  """Average pooling to a fixed output size, for any input size (torch semantics).

  Output bin (i, j) averages rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1 and
  columns floor(j*W/ow) .. ceil((j+1)*W/ow) - 1, so bins may differ in size or
  overlap when H is not a multiple of oh, and repeat pixels when oh > H.

  x: [N, H, W, C] or [H, W, C]; output_size: int or (oh, ow).
  Returns [N, oh, ow, C] or [oh, ow, C].
  """
  x, added = _as_batch(x, "adaptive_avg_pool")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.float32)
  oh, ow = _pair(output_size, "output_size", "adaptive_avg_pool")
  if oh < 1 or ow < 1:
    raise ValueError(f"adaptive_avg_pool: output_size must be >= 1, got output_size={(oh, ow)}")
  if x.shape[1] < 1 or x.shape[2] < 1:
    raise ValueError(f"adaptive_avg_pool: x must have H, W >= 1, got shape {x.shape}")
  out = _adaptive_mean_axis(_adaptive_mean_axis(x, 1, oh), 2, ow)
  return out[0] if added else out


def shift_invariance(
  x, pool_fn: Callable[[jax.Array], jax.Array], *, shift: int = 1, axis: int = -2
) -> float:
  """Fraction of pooled outputs left unchanged when the input shifts by `shift` pixels.

  The Deep Learning book's figure: move the input `shift` pixels towards higher
  indices along `axis` (right, for the default axis -2 = W of [H, W, C] or
  [N, H, W, C]) and compare the outputs at the same positions.

  Precisely, with L = x.shape[axis], a = x[shift:] and b = x[:L - shift] along
  `axis`: then b[p + shift] = a[p], so b is a moved right by `shift`, and the
  pixels that enter at the left edge are real data of x rather than wrapped or
  padded values. The result is mean(pool_fn(a) == pool_fn(b)) over every output
  element. `pool_fn` must map both crops to the same shape with aligned
  positions (stride 1, e.g. `lambda v: max_pool(v, 3, stride=1)`); the identity
  gives the unpooled baseline. "Unchanged" is exact equality, which is what max
  pooling gives when the same input pixel stays the maximum.

  Returns a Python float in [0, 1].
  """
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"shift_invariance: x must have at least one axis, got shape {x.shape}")
  if not -x.ndim <= axis < x.ndim:
    raise ValueError(
      f"shift_invariance: axis must be in [{-x.ndim}, {x.ndim}) for x of shape "
      f"{x.shape}, got axis={axis}"
    )
  length = x.shape[axis]
  if not 1 <= shift < length:
    raise ValueError(
      f"shift_invariance: shift must be between 1 and {length - 1} (x.shape[{axis}] - 1) "
      f"for x of shape {x.shape}, got shift={shift}"
    )
  a = lax.slice_in_dim(x, shift, length, axis=axis)
  b = lax.slice_in_dim(x, 0, length - shift, axis=axis)
  pa, pb = pool_fn(a), pool_fn(b)
  if pa.shape != pb.shape:
    raise ValueError(
      f"shift_invariance: pool_fn must give equal shapes for the two crops, got "
      f"{pa.shape} and {pb.shape}"
    )
  return float(jnp.mean(pa == pb))
