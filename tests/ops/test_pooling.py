"""Pooling against a plain numpy reference (and torch when installed), and its invariance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import pooling
from tests.conftest import pair


def _reference_pool(x, window, stride, padding, reduce):
  """Loops over output pixels of x [N, H, W, C]; max pads with -inf, avg with 0 (counted)."""
  (kh, kw), (ph, pw) = pair(window), pair(padding)
  sh, sw = pair(window if stride is None else stride)
  fill = -np.inf if reduce == "max" else 0.0
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=fill)
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
  for i in range(oh):
    for j in range(ow):
      win = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
      out[:, i, j, :] = win.max(axis=(1, 2)) if reduce == "max" else win.mean(axis=(1, 2))
  return out


def _reference_adaptive(x, output_size):
  oh, ow = pair(output_size)
  n, h, w, c = x.shape
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
    for j in range(ow):
      c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
      out[:, i, j, :] = x[:, r0:r1, c0:c1, :].mean(axis=(1, 2))
  return out


# (H, W, window, stride, padding)
POOL_CASES = [
  (8, 8, 2, None, 0),
  (9, 7, 3, 2, 1),
  (10, 12, 3, 1, 0),
  (11, 11, 3, 2, 0),
  (13, 10, (3, 2), (2, 1), (1, 0)),
  (7, 9, 2, (1, 2), 1),
  (12, 12, 5, 3, 2),
]


@pytest.mark.parametrize("h,w,window,stride,padding", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_matches_numpy(h, w, window, stride, padding, kind):
  rng = np.random.default_rng(h * w)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  fn = pooling.max_pool if kind == "max" else pooling.avg_pool
  ours = fn(x, window, stride=stride, padding=padding)
  expected = _reference_pool(x, window, stride, padding, kind)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)
  # A single image [H, W, C] gives the same numbers without the batch axis.
  np.testing.assert_allclose(
    fn(x[1], window, stride=stride, padding=padding), expected[1], atol=1e-6, rtol=0
  )


def test_avg_pool_counts_padding():
  x = jnp.ones((1, 4, 4, 1))
  out = pooling.avg_pool(x, 3, stride=1, padding=1)
  # Corner windows hold 4 real ones out of 9, edges 6, the interior 9.
  expected = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]) / 9
  np.testing.assert_allclose(out[0, :, :, 0], expected)


def test_max_pool_padding_never_wins():
  x = -jnp.ones((1, 4, 4, 1))
  np.testing.assert_array_equal(pooling.max_pool(x, 3, stride=1, padding=1), x)


# (H, W, output_size): even splits and ones that do not divide, shrinking and growing.
ADAPTIVE_CASES = [
  (8, 8, 4),
  (7, 7, 3),
  (10, 10, 4),
  (5, 5, 7),
  (7, 10, (3, 4)),
  (6, 9, (6, 3)),
  (13, 6, (1, 1)),
  (3, 4, (5, 6)),
]


@pytest.mark.parametrize("h,w,output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool_matches_numpy(h, w, output_size):
  rng = np.random.default_rng(h + w)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  ours = pooling.adaptive_avg_pool(x, output_size)
  expected = _reference_adaptive(x, output_size)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)
  np.testing.assert_allclose(pooling.adaptive_avg_pool(x[0], output_size), expected[0], atol=1e-6)


def test_adaptive_bins_7_to_3():
  # torch's bins for 7 -> 3 overlap: rows [0, 3), [2, 5), [4, 7).
  x = jnp.arange(7.0).reshape(1, 7, 1, 1)
  out = pooling.adaptive_avg_pool(x, (3, 1))
  np.testing.assert_allclose(out[0, :, 0, 0], [1.0, 3.0, 5.0])


def test_adaptive_avg_pool_under_jit_and_grad():
  x = jnp.arange(2 * 7 * 10 * 3, dtype=jnp.float32).reshape(2, 7, 10, 3)
  f = jax.jit(lambda v: pooling.adaptive_avg_pool(v, (3, 4)))
  np.testing.assert_allclose(f(x), _reference_adaptive(np.asarray(x), (3, 4)), rtol=1e-6)
  # Every input pixel lies in at least one bin, so every gradient entry is positive.
  g = jax.grad(lambda v: pooling.adaptive_avg_pool(v, (3, 4)).sum())(x)
  assert float(g.min()) > 0


@pytest.mark.parametrize("h,w,window,stride,padding", POOL_CASES[:4])
def test_pool_matches_torch(h, w, window, stride, padding):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(h * w)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  stride_t = window if stride is None else stride
  for ours, theirs in [
    (
      pooling.max_pool(x, window, stride=stride, padding=padding),
      F.max_pool2d(xt, window, stride=stride_t, padding=padding),
    ),
    (
      pooling.avg_pool(x, window, stride=stride, padding=padding),
      F.avg_pool2d(xt, window, stride=stride_t, padding=padding),
    ),
  ]:
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("h,w,output_size", ADAPTIVE_CASES)
def test_adaptive_avg_pool_matches_torch(h, w, output_size):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(h + w)
  x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  theirs = (
    torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), output_size)
    .permute(0, 2, 3, 1)
    .numpy()
  )
  np.testing.assert_allclose(pooling.adaptive_avg_pool(x, output_size), theirs, atol=1e-6, rtol=0)


def test_max_pool_is_nearly_invariant_to_one_pixel_shifts():
  # |N(0, 1)| rather than relu(N(0, 1)): non-negative like post-ReLU activations
  # but without exact zeros, whose ties would make unpooled pixels "unchanged".
  x = jnp.abs(jax.random.normal(jax.random.key(0), (4, 48, 48, 8)))
  pool = lambda v: pooling.max_pool(v, 3, stride=1)
  pooled = pooling.shift_invariance(x, pool, shift=1)
  unpooled = pooling.shift_invariance(x, lambda v: v, shift=1)
  # Theory for i.i.d. continuous inputs: the 3x3 windows at one output position
  # before and after a one-column shift together cover 3 rows x 4 columns = 12
  # pixels, of which 3 x 2 = 6 are in both. The output is unchanged exactly when
  # the maximum of the 12 lies in the shared 6: probability 6 / 12 = 0.5.
  theory = (3 * 2) / (3 * 4)
  assert pooled >= 0.45, pooled
  assert abs(pooled - theory) < 0.03, (pooled, theory)
  assert unpooled <= 0.01, unpooled


def test_shift_invariance_compares_same_positions():
  # A signal that is constant along the shift axis cannot change when shifted.
  x = jnp.tile(jnp.arange(6.0)[:, None, None], (1, 9, 2))
  assert pooling.shift_invariance(x, lambda v: v) == 1.0
  # A ramp along the shift axis changes at every position, pooled or not.
  ramp = jnp.tile(jnp.arange(9.0)[None, :, None], (6, 1, 2))
  assert pooling.shift_invariance(ramp, lambda v: pooling.max_pool(v, 3, stride=1)) == 0.0
  # Shifting along rows (axis 0 of [H, W, C]) instead sees the first signal change.
  assert pooling.shift_invariance(x, lambda v: v, axis=0) == 0.0


def test_errors_name_the_argument():
  with pytest.raises(
    ValueError, match=r"x must be \[N, H, W, C\] or \[H, W, C\], got shape \(8, 8\)"
  ):
    pooling.max_pool(jnp.ones((8, 8)), 2)
  with pytest.raises(ValueError, match=r"window \(5, 5\) must fit .*got x of shape \(1, 4, 4, 1\)"):
    pooling.avg_pool(jnp.ones((1, 4, 4, 1)), 5)
  with pytest.raises(ValueError, match=r"padding must be between 0 and half the window"):
    pooling.max_pool(jnp.ones((1, 4, 4, 1)), 2, padding=2)
  with pytest.raises(ValueError, match=r"output_size must be >= 1, got output_size=\(0, 3\)"):
    pooling.adaptive_avg_pool(jnp.ones((1, 4, 4, 1)), (0, 3))
  with pytest.raises(ValueError, match=r"shift must be between 1 and 3"):
    pooling.shift_invariance(jnp.ones((4, 4, 1)), lambda v: v, shift=4)


@pytest.mark.parametrize("pool", [pooling.max_pool, pooling.avg_pool])
def test_pooling_differentiates_under_jit(pool):
  # A traced (jnp) initial value hides the monoid from JAX, and jit(grad) then fails.
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  grad = jax.jit(jax.grad(lambda x: pool(x, 2).sum()))(x)
  expected = np.zeros((4, 4)) if pool is pooling.max_pool else np.full((4, 4), 0.25)
  if pool is pooling.max_pool:
    expected[1::2, 1::2] = 1.0  # each 2x2 window's maximum is its bottom-right pixel
  np.testing.assert_allclose(grad[0, ..., 0], expected)


# (window, stride, padding): every max pool of research.models (AlexNet/ZFNet 3 s2,
# VGG 2 s2, ResNet/DenseNet 3 s2 p1, GoogLeNet's ceil-mode 3 s2 with the bottom/right
# overhang, its inception 3 s1 p1 and its 2 s2), a non-square one, and a stride beyond
# the window (pixels no window sees).
GRAD_CASES = [
  (2, 3, 0),
  (3, 2, 0),
  (2, None, 0),
  (3, 2, 1),
  (3, 2, ((0, 1), (0, 1))),
  (3, 1, 1),
  ((2, 3), (1, 2), ((1, 0), (0, 2))),
]


def _lax_max_pool_vjp(x, dy, window, stride, padding):
  """lax's own gradient of the same max pool (select-and-scatter), the reference."""
  window, stride, sides = pooling._window_args(x, window, stride, padding, "reference")
  return jax.vjp(lambda v: pooling._lax_max_pool(v, window, stride, sides), x)[1](dy)[0]


@pytest.mark.parametrize("window,stride,padding", GRAD_CASES)
def test_max_pool_gradient_routes_like_lax(window, stride, padding):
  # ReLU'd inputs: whole windows of zeros, where the first maximum in row-major order
  # must take the gradient, as lax's select-and-scatter (and torch) give it.
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 11, 12, 5)))
  y, vjp = jax.vjp(lambda v: pooling.max_pool(v, window, stride=stride, padding=padding), x)
  dy = jax.random.normal(jax.random.key(1), y.shape)
  expected = _lax_max_pool_vjp(x, dy, window, stride, padding)
  np.testing.assert_allclose(vjp(dy)[0], expected, rtol=0, atol=1e-6)
  under_jit = jax.jit(
    lambda x, dy: jax.vjp(lambda v: pooling.max_pool(v, window, stride=stride, padding=padding), x)[
      1
    ](dy)[0]
  )
  np.testing.assert_allclose(under_jit(x, dy), expected, rtol=0, atol=1e-6)


def test_max_pool_gradient_matches_torch():
  torch = pytest.importorskip("torch")
  x = np.maximum(np.random.default_rng(0).normal(size=(2, 13, 13, 4)), 0).astype(np.float32)
  y, vjp = jax.vjp(lambda v: pooling.max_pool(v, 3, stride=2, padding=1), jnp.asarray(x))
  dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  torch.nn.functional.max_pool2d(xt, 3, stride=2, padding=1).backward(
    torch.from_numpy(dy).permute(0, 3, 1, 2)
  )
  np.testing.assert_allclose(
    vjp(jnp.asarray(dy))[0], xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-6
  )


def test_max_pool_gradient_under_vmap_and_second_order():
  x = jax.random.normal(jax.random.key(2), (3, 1, 8, 8, 2))
  loss = lambda v: (pooling.max_pool(v, 3, stride=2, padding=1) ** 2).sum()
  per_example = jax.vmap(jax.grad(loss))(x)
  np.testing.assert_allclose(per_example[1], jax.grad(loss)(x[1]), rtol=1e-6)
  # The input-gradient penalty differentiates the gradient again. The routing is
  # piecewise constant: a pixel that is the maximum of k windows has gradient 2 k x, so
  # d/dx of the penalty (2 k x)^2 is 8 k^2 x there, and 0 where it wins none.
  penalty = lambda v: (jax.grad(loss)(v) ** 2).sum()
  wins = jax.grad(lambda v: pooling.max_pool(v, 3, stride=2, padding=1).sum())(x[0])
  assert float(wins.max()) >= 2  # some pixels win overlapping windows
  np.testing.assert_allclose(jax.grad(penalty)(x[0]), 8 * wins**2 * x[0], rtol=1e-5, atol=1e-6)


def test_max_pool_gradient_in_bfloat16():
  x = jax.nn.relu(jax.random.normal(jax.random.key(3), (2, 9, 9, 3))).astype(jnp.bfloat16)
  y, vjp = jax.vjp(lambda v: pooling.max_pool(v, 3, stride=2), x)
  dy = jnp.ones_like(y)
  assert vjp(dy)[0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(vjp(dy)[0], _lax_max_pool_vjp(x, dy, 3, 2, 0))


def test_explicit_padding_sides_are_checked():
  with pytest.raises(
    ValueError, match=r"each side between 0 and window - 1 .*\(\(0, 3\), \(0, 0\)\)"
  ):
    pooling.max_pool(jnp.ones((1, 6, 6, 1)), 3, padding=((0, 3), (0, 0)))
