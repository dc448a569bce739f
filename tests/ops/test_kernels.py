"""Handcrafted filters: their sums, orientation, the gaussian's weights, and learning one back."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage
from scipy.signal import windows

from research.ops import conv, kernels


@pytest.mark.parametrize(
  "name,total",
  [
    ("box", 1.0),
    ("gaussian", 1.0),
    ("sharpen", 1.0),
    ("emboss", 1.0),
    ("sobel_x", 0.0),
    ("sobel_y", 0.0),
    ("laplacian", 0.0),
  ],
)
def test_kernel_sums(name, total):
  k = kernels.KERNELS[name]()
  assert k.dtype == jnp.float32
  assert k.ndim == 2 and k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
  np.testing.assert_allclose(float(k.sum()), total, atol=1e-6)


def test_kernels_dict_is_complete():
  assert set(kernels.KERNELS) == {
    "box",
    "gaussian",
    "sharpen",
    "sobel_x",
    "sobel_y",
    "laplacian",
    "emboss",
  }


@pytest.mark.parametrize("size", [1, 3, 7])
def test_box_and_gaussian_sizes(size):
  assert kernels.box(size).shape == (size, size)
  np.testing.assert_allclose(float(kernels.box(size).sum()), 1.0, atol=1e-6)
  assert kernels.gaussian(size, sigma=0.8).shape == (size, size)
  np.testing.assert_allclose(float(kernels.gaussian(size, 0.8).sum()), 1.0, atol=1e-6)


def test_sobel_x_on_a_step_edge():
  # Dark left half (0), bright right half (1): intensity rises to the right.
  image = np.zeros((8, 10), np.float32)
  image[:, 5:] = 1.0
  out = np.asarray(conv.correlate2d(image, kernels.sobel_x()))  # [6, 8], column j sees j..j+2
  # Windows straddling the edge (columns 3 and 4 of the output) respond +4.
  np.testing.assert_allclose(out[:, 3:5], 4.0)
  # Windows inside either flat region respond 0.
  np.testing.assert_allclose(out[:, :3], 0.0)
  np.testing.assert_allclose(out[:, 5:], 0.0)
  # sobel_y measures change downwards, of which a vertical edge has none.
  np.testing.assert_allclose(conv.correlate2d(image, kernels.sobel_y()), 0.0)
  # And sobel_y sees the same step when it runs downwards, positive too.
  np.testing.assert_allclose(conv.correlate2d(image.T, kernels.sobel_y())[3:5], 4.0)


def test_laplacian_is_zero_on_a_ramp_and_box_keeps_flat_regions():
  ramp = np.tile(np.arange(9, dtype=np.float32), (9, 1))
  np.testing.assert_allclose(conv.correlate2d(ramp, kernels.laplacian()), 0.0, atol=1e-5)
  np.testing.assert_allclose(conv.correlate2d(ramp, kernels.sobel_x()), 8.0, atol=1e-5)
  flat = np.full((6, 6), 3.0, np.float32)
  for name in ("box", "gaussian", "sharpen", "emboss"):
    np.testing.assert_allclose(conv.correlate2d(flat, kernels.KERNELS[name]()), 3.0, atol=1e-5)


@pytest.mark.parametrize("size,sigma", [(5, 1.0), (3, 0.5), (7, 1.5), (9, 2.0)])
def test_gaussian_matches_scipy(size, sigma):
  ours = np.asarray(kernels.gaussian(size, sigma))
  g = windows.gaussian(size, std=sigma)
  g /= g.sum()
  np.testing.assert_allclose(ours, np.outer(g, g), atol=1e-6, rtol=0)
  # scipy.ndimage's own gaussian filter, truncated at the kernel radius, applied
  # to a unit impulse returns its (normalized) weights.
  impulse = np.zeros((size, size))
  impulse[size // 2, size // 2] = 1.0
  radius = size // 2
  weights = ndimage.gaussian_filter(impulse, sigma, mode="constant", truncate=radius / sigma)
  np.testing.assert_allclose(ours, weights, atol=1e-6, rtol=0)


def test_bad_sizes_and_sigma():
  for fn in (kernels.box, kernels.gaussian):
    for size in (0, -3, 4):
      with pytest.raises(ValueError, match=rf"size must be a positive odd int, got size={size}"):
        fn(size)
    with pytest.raises(ValueError, match="size must be a positive odd int"):
      fn(3.0)
  for sigma in (0.0, -1.0):
    with pytest.raises(ValueError, match=rf"sigma must be > 0, got sigma={sigma}"):
      kernels.gaussian(5, sigma)


def test_learned_conv_recovers_sobel():
  """Engineered versus learned: one 3x3 conv, no bias, fitted to sobel_x outputs."""
  start = time.perf_counter()
  images = jax.random.normal(jax.random.key(0), (16, 24, 24))
  target_kernel = kernels.sobel_x()
  correlate = jax.vmap(conv.correlate2d, in_axes=(0, None))
  targets = correlate(images, target_kernel)

  def loss_fn(kernel):
    return jnp.mean((correlate(images, kernel) - targets) ** 2)

  optimizer = optax.adam(0.05)

  @jax.jit
  def train(kernel):
    def step(carry, _):
      kernel, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(kernel)
      updates, opt_state = optimizer.update(grads, opt_state)
      return (optax.apply_updates(kernel, updates), opt_state), loss

    (kernel, _), losses = jax.lax.scan(step, (kernel, optimizer.init(kernel)), None, length=400)
    return kernel, losses

  learned, losses = train(jnp.zeros((3, 3), jnp.float32))
  error = float(jnp.abs(learned - target_kernel).max())
  assert error < 1e-2, (error, np.asarray(learned))
  assert float(losses[-1]) < 1e-3 * float(losses[0])
  assert time.perf_counter() - start < 10.0


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_transposed_convolution_is_bilinear_interpolation_inside(factor):
  """FCN's upsampling: a stride-`factor` transposed convolution initialized with the bilinear
  kernel equals jax.image.resize's bilinear (half-pixel centres) away from the border."""
  k = kernels.bilinear_upsampling(factor)
  size = 2 * factor - factor % 2
  assert k.shape == (size, size) and float(k.sum()) == pytest.approx(factor**2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 9, 11, 2)), jnp.float32)
  pad = size - 1 - factor // 2  # torch's ConvTranspose2d(size, factor, padding=factor // 2)
  kernel = jnp.zeros((size, size, 2, 2)).at[:, :, 0, 0].set(k).at[:, :, 1, 1].set(k)
  up = jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    [(pad, pad)] * 2,
    lhs_dilation=(factor, factor),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  assert up.shape == (1, 9 * factor, 11 * factor, 2)
  want = jax.image.resize(x, up.shape, "bilinear")
  inner = slice(factor, -factor)
  np.testing.assert_allclose(up[:, inner, inner], want[:, inner, inner], atol=1e-5)


def test_bilinear_rejects_a_bad_factor():
  with pytest.raises(ValueError, match="factor must be an int >= 1; received 0"):
    kernels.bilinear_upsampling(0)
