"""research.ops.conv_grad: the convolution whose weight gradient is summed per image, against
lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research.ops import conv_grad


def _grads(conv, x, kernel, strides, padding):
  """Value and (dx, dkernel) of sum(sin(conv(x, kernel))), under jit."""

  def loss(x, kernel):
    return jnp.sum(jnp.sin(conv(x, kernel, strides, padding)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


def _lax(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=conv_grad.NHWC)


def _ours(x, kernel, strides, padding):
  return conv_grad.conv2d(x, kernel, strides, padding, None)


@pytest.mark.parametrize(
  "shape, kernel, strides, padding",
  [
    # Outputs of 750, 400 and 729 pixels: the per-image weight gradient.
    ((3, 30, 25, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1))),
    ((2, 40, 40, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ((2, 109, 109, 3), (11, 11, 3, 4), (4, 4), ((2, 2), (2, 2))),
    # Asymmetric padding and a stride that leaves rows over, then small outputs (XLA's).
    ((2, 44, 41, 2), (3, 3, 2, 3), (2, 1), ((0, 1), (1, 0))),
    ((2, 9, 9, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 45, 45, 4), (5, 5, 4, 5), (2, 2), ((0, 0), (0, 0))),
  ],
)
def test_matches_lax_values_and_gradients(shape, kernel, strides, padding, monkeypatch):
  # Small cases: lower the per-image FLOP threshold so that the first three take that path.
  monkeypatch.setattr(conv_grad, "PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS", 0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  (ours, (dx, dk)) = _grads(_ours, x, k, strides, padding)
  (ref, (rdx, rdk)) = _grads(_lax, x, k, strides, padding)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5 * float(jnp.abs(rdx).max()))
  np.testing.assert_allclose(dk, rdk, rtol=1e-4, atol=1e-5 * float(jnp.abs(rdk).max()))


def test_per_image_weight_gradient_is_the_one_taken_on_cpu():
  """Above the pixel threshold, the CPU program's backward pass is a loop over images, not
  a convolution with an output-sized window; other platforms keep XLA's."""
  x = jnp.ones((2, 24, 24, 32))
  k = jnp.ones((3, 3, 32, 384))
  assert 24 * 24 >= conv_grad.PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS
  assert 2 * 24 * 24 * k.size >= conv_grad.PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS

  def dk(x, k):
    return jax.grad(lambda k: _ours(x, k, (1, 1), ((1, 1), (1, 1))).sum())(k)

  def program(platform):
    return jax.jit(dk).trace(x, k).lower(lowering_platforms=(platform,)).as_text()

  cpu = program("cpu")
  assert "stablehlo.while" in cpu
  assert "stablehlo.convolution" not in cpu
  for other in ("cuda", "tpu"):
    text = program(other)
    assert "stablehlo.while" not in text
    assert text.count("stablehlo.convolution") == 1
