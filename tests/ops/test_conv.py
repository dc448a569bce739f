"""The convolution against scipy.signal and jax.lax, and its shape arithmetic."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import signal

from research.ops import conv
from tests.conftest import pair

ATOL = 1e-5


def _scipy_reference(image, kernel, stride, padding, *, flip):
  """scipy 'valid' on the zero-padded image, subsampled by the stride."""
  (sh, sw), (ph, pw) = pair(stride), pair(padding)
  padded = np.pad(np.asarray(image, np.float64), ((ph, ph), (pw, pw)))
  fn = signal.convolve2d if flip else signal.correlate2d
  return fn(padded, np.asarray(kernel, np.float64), mode="valid")[::sh, ::sw]


# (H, W, kh, kw, stride, padding): square and non-square images and kernels,
# strides 1, 2, 3 and a pair, paddings 0, 1, 2 and a pair.
CASES = [
  (7, 7, 3, 3, 1, 0),
  (8, 11, 3, 3, 1, 1),
  (9, 6, 2, 4, 1, 2),
  (10, 10, 3, 5, 2, 0),
  (13, 9, 5, 3, 2, 1),
  (12, 12, 4, 4, 3, 0),
  (11, 14, 1, 3, 3, 2),
  (10, 13, 3, 2, (1, 2), (0, 1)),
  (15, 8, 5, 5, (3, 1), (2, 0)),
  (6, 9, 6, 2, (2, 3), 1),
]


@pytest.mark.parametrize("h,w,kh,kw,stride,padding", CASES)
@pytest.mark.parametrize("flip", [False, True], ids=["correlate", "convolve"])
def test_matches_scipy_single_channel(h, w, kh, kw, stride, padding, flip):
  rng = np.random.default_rng(h * 100 + w * 10 + kh)
  image = rng.normal(size=(h, w)).astype(np.float32)
  kernel = rng.normal(size=(kh, kw)).astype(np.float32)
  fn = conv.convolve2d if flip else conv.correlate2d
  ours = fn(image, kernel, stride=stride, padding=padding)
  expected = _scipy_reference(image, kernel, stride, padding, flip=flip)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("h,w,kh,kw,stride,padding", CASES[::2])
@pytest.mark.parametrize("flip", [False, True], ids=["correlate", "convolve"])
def test_multichannel_is_sum_over_channels_of_scipy(h, w, kh, kw, stride, padding, flip):
  rng = np.random.default_rng(7 + h + w)
  c, f = 3, 4
  image = rng.normal(size=(h, w, c)).astype(np.float32)
  kernel = rng.normal(size=(kh, kw, c, f)).astype(np.float32)
  fn = conv.convolve2d if flip else conv.correlate2d
  ours = fn(image, kernel, stride=stride, padding=padding)
  expected = np.stack(
    [
      sum(
        _scipy_reference(image[..., ci], kernel[:, :, ci, fi], stride, padding, flip=flip)
        for ci in range(c)
      )
      for fi in range(f)
    ],
    axis=-1,
  )
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)


def test_2d_kernel_on_multichannel_image_is_per_channel():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(9, 10, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 2)).astype(np.float32)
  ours = conv.correlate2d(image, kernel, stride=2, padding=1)
  expected = np.stack(
    [_scipy_reference(image[..., ci], kernel, 2, 1, flip=False) for ci in range(3)], -1
  )
  assert ours.shape == (5, 6, 3)
  np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)
  np.testing.assert_allclose(
    conv.correlate2d_lax(image, kernel, stride=2, padding=1), expected, atol=ATOL, rtol=0
  )


def test_2d_image_with_filter_bank():
  rng = np.random.default_rng(2)
  image = rng.normal(size=(8, 8)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 5)).astype(np.float32)
  ours = conv.correlate2d(image, kernel)
  assert ours.shape == (6, 6, 5)
  for fi in range(5):
    np.testing.assert_allclose(
      ours[..., fi], signal.correlate2d(image, kernel[:, :, 0, fi], "valid"), atol=ATOL
    )


@pytest.mark.parametrize("h,w,kh,kw,stride,padding", CASES)
def test_matches_lax(h, w, kh, kw, stride, padding):
  rng = np.random.default_rng(3 + h * w)
  c, f = 2, 3
  image = rng.normal(size=(h, w, c)).astype(np.float32)
  kernel = rng.normal(size=(kh, kw, c, f)).astype(np.float32)
  ours = conv.correlate2d(image, kernel, stride=stride, padding=padding)
  np.testing.assert_allclose(
    ours, conv.correlate2d_lax(image, kernel, stride=stride, padding=padding), atol=ATOL, rtol=0
  )
  (sh, sw), (ph, pw) = pair(stride), pair(padding)
  direct = lax.conv_general_dilated(
    image[None],
    kernel,
    window_strides=(sh, sw),
    padding=((ph, ph), (pw, pw)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )[0]
  np.testing.assert_allclose(ours, direct, atol=ATOL, rtol=0)


def test_convolve_is_correlate_with_flipped_kernel():
  rng = np.random.default_rng(4)
  image = rng.normal(size=(10, 9, 2)).astype(np.float32)
  kernel = rng.normal(size=(3, 4, 2, 3)).astype(np.float32)
  np.testing.assert_allclose(
    conv.convolve2d(image, kernel, stride=(2, 1), padding=1),
    conv.correlate2d(image, kernel[::-1, ::-1], stride=(2, 1), padding=1),
    atol=ATOL,
    rtol=0,
  )
  # A symmetric kernel cannot tell the two apart; an asymmetric one can.
  assert not np.allclose(conv.convolve2d(image, kernel), conv.correlate2d(image, kernel))


def test_convolution_commutes_correlation_does_not():
  rng = np.random.default_rng(5)
  a = rng.normal(size=(6, 6)).astype(np.float32)
  b = rng.normal(size=(6, 6)).astype(np.float32)
  # Full convolution (padding k - 1) of two equal-sized arrays in both orders.
  ab, ba = conv.convolve2d(a, b, padding=5), conv.convolve2d(b, a, padding=5)
  np.testing.assert_allclose(ab, ba, atol=ATOL)
  assert not np.allclose(conv.correlate2d(a, b, padding=5), conv.correlate2d(b, a, padding=5))


def test_jit_with_static_stride_and_padding():
  rng = np.random.default_rng(6)
  image = rng.normal(size=(12, 12, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
  jitted = jax.jit(conv.correlate2d, static_argnames=("stride", "padding"))
  np.testing.assert_allclose(
    jitted(image, kernel, stride=(2, 3), padding=1),
    conv.correlate2d(image, kernel, stride=(2, 3), padding=1),
    atol=ATOL,
  )


def test_integer_image_is_promoted_to_float():
  image = np.arange(25, dtype=np.uint8).reshape(5, 5)
  out = conv.correlate2d(image, np.full((3, 3), 0.5, np.float32))
  assert jnp.issubdtype(out.dtype, jnp.floating)
  np.testing.assert_allclose(out[0, 0], 0.5 * (0 + 1 + 2 + 5 + 6 + 7 + 10 + 11 + 12))


def test_output_size_formula():
  for n, k, stride, padding in itertools.product(
    [1, 5, 7, 28, 32, 224], [1, 2, 3, 5, 7, 11], [1, 2, 3, 4], [0, 1, 2, 3]
  ):
    if n + 2 * padding < k:
      with pytest.raises(ValueError, match="give no output"):
        conv.output_size(n, k, stride, padding)
    else:
      assert conv.output_size(n, k, stride, padding) == (n - k + 2 * padding) // stride + 1


def test_output_size_known_values():
  # AlexNet conv1 (227, 11, 4, 0) -> 55; VGG 3x3 'same' keeps 224; ResNet stem 224 -> 112.
  assert conv.output_size(227, 11, 4, 0) == 55
  assert conv.output_size(224, 3, 1, 1) == 224
  assert conv.output_size(224, 7, 2, 3) == 112
  assert conv.output_size(32, 5) == 28


@pytest.mark.parametrize(
  "h,w,kh,kw,stride,padding",
  [
    (5, 5, 3, 3, 1, 0),
    (7, 9, 3, 2, 2, 1),
    (8, 8, 5, 5, 3, 2),
    (10, 6, 4, 3, (3, 2), (1, 0)),
    (4, 4, 4, 4, 1, 0),
    (3, 11, 5, 3, (1, 4), (1, 2)),
    (16, 16, 3, 3, 5, 1),
  ],
)
def test_output_size_matches_produced_shapes(h, w, kh, kw, stride, padding):
  (sh, sw), (ph, pw) = pair(stride), pair(padding)
  image = jnp.ones((h, w, 2))
  kernel = jnp.ones((kh, kw, 2, 3))
  expected = (conv.output_size(h, kh, sh, ph), conv.output_size(w, kw, sw, pw), 3)
  for fn in (conv.correlate2d, conv.convolve2d, conv.correlate2d_lax):
    assert fn(image, kernel, stride=stride, padding=padding).shape == expected


def test_output_size_errors_name_the_arguments():
  with pytest.raises(ValueError, match=r"n=3, k=5, stride=1, padding=0 give no output"):
    conv.output_size(3, 5)
  with pytest.raises(ValueError, match=r"stride must be >= 1, got stride=0"):
    conv.output_size(8, 3, stride=0)
  with pytest.raises(ValueError, match=r"padding must be >= 0, got padding=-1"):
    conv.output_size(8, 3, padding=-1)
  with pytest.raises(ValueError, match=r"k must be >= 1, got k=0"):
    conv.output_size(8, 0)
  with pytest.raises(ValueError, match=r"stride must be an int"):
    conv.output_size(8, 3, stride=1.5)


ALL = [conv.correlate2d, conv.convolve2d, conv.correlate2d_lax]


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_wrong_rank_errors(fn):
  image_msg = r"image must be \[H, W\] or \[H, W, C\], got shape \(2, 8, 8, 3\)"
  with pytest.raises(ValueError, match=image_msg):
    fn(jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3)))
  kernel_msg = r"kernel must be \[kh, kw\] or \[kh, kw, C, F\], got shape \(3, 3, 3\)"
  with pytest.raises(ValueError, match=kernel_msg):
    fn(jnp.ones((8, 8, 3)), jnp.ones((3, 3, 3)))


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_channel_mismatch_error(fn):
  with pytest.raises(ValueError, match=r"C = 3 .*\(8, 8, 3\).*got kernel shape \(3, 3, 4, 2\)"):
    fn(jnp.ones((8, 8, 3)), jnp.ones((3, 3, 4, 2)))
  # A grayscale image is one channel: a kernel expecting three does not fit.
  with pytest.raises(ValueError, match=r"C = 1 .*got kernel shape \(3, 3, 3, 2\)"):
    fn(jnp.ones((8, 8)), jnp.ones((3, 3, 3, 2)))


@pytest.mark.parametrize("fn", ALL, ids=lambda f: f.__name__)
def test_kernel_larger_than_padded_image_error(fn):
  msg = r"\(5, 3\) must fit in the padded image \(4, 6\).*\(5, 3\)"
  with pytest.raises(ValueError, match=msg):
    fn(jnp.ones((4, 6)), jnp.ones((5, 3)))
  # Padding can make it fit.
  assert fn(jnp.ones((4, 6)), jnp.ones((5, 3)), padding=1).shape == (2, 6)


def test_bad_stride_and_padding_errors():
  with pytest.raises(ValueError, match=r"stride must be >= 1, got stride=\(1, 0\)"):
    conv.correlate2d(jnp.ones((8, 8)), jnp.ones((3, 3)), stride=(1, 0))
  with pytest.raises(ValueError, match=r"padding must be >= 0, got padding=\(-1, -1\)"):
    conv.correlate2d(jnp.ones((8, 8)), jnp.ones((3, 3)), padding=-1)
  with pytest.raises(ValueError, match=r"stride must be an int or a pair"):
    conv.correlate2d(jnp.ones((8, 8)), jnp.ones((3, 3)), stride=(1, 2, 3))
