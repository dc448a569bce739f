"""research.models.layers: the convolution whose weight gradient is summed per image, and
the Conv layer built on it, against lax.conv_general_dilated and nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research.models import layers


def _grads(conv, x, kernel, strides, padding):
  """Value and (dx, dkernel) of sum(sin(conv(x, kernel))), under jit."""

  def loss(x, kernel):
    y = conv(x, kernel, strides, padding, dimension_numbers=layers.NHWC)
    return jnp.sum(jnp.sin(y))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


@pytest.mark.parametrize(
  "shape, kernel, strides, padding",
  [
    # Outputs of 750, 400 and 729 pixels: the per-image weight gradient.
    ((3, 30, 25, 5), (3, 3, 5, 7), (1, 1), "SAME"),
    ((2, 40, 40, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ((2, 109, 109, 3), (11, 11, 3, 4), (4, 4), ((2, 2), (2, 2))),
    # Asymmetric padding and a stride that leaves rows over, then small outputs (XLA's).
    ((2, 44, 41, 2), (3, 3, 2, 3), (2, 1), ((0, 1), (1, 0))),
    ((2, 9, 9, 4), (3, 3, 4, 5), (1, 1), "SAME"),
    ((2, 45, 45, 4), (5, 5, 4, 5), (2, 2), "VALID"),
  ],
)
def test_matches_lax_values_and_gradients(shape, kernel, strides, padding, monkeypatch):
  # Small cases: lower the per-image FLOP threshold so that the first three take that path.
  monkeypatch.setattr(layers, "PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS", 0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  (ours, (dx, dk)) = _grads(layers.conv_general_dilated, x, k, strides, padding)
  (ref, (rdx, rdk)) = _grads(lax.conv_general_dilated, x, k, strides, padding)
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5 * float(jnp.abs(rdx).max()))
  np.testing.assert_allclose(dk, rdk, rtol=1e-4, atol=1e-5 * float(jnp.abs(rdk).max()))


def test_per_image_weight_gradient_is_the_one_taken_on_cpu():
  """Above the pixel threshold, the CPU program's backward pass is a loop over images, not
  a convolution with an output-sized window; other platforms keep XLA's."""
  x = jnp.ones((2, 24, 24, 32))
  k = jnp.ones((3, 3, 32, 384))
  assert 24 * 24 >= layers.PER_IMAGE_WEIGHT_GRAD_MIN_PIXELS
  assert 2 * 24 * 24 * k.size >= layers.PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS

  def dk(x, k):
    return jax.grad(
      lambda k: layers.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=layers.NHWC
      ).sum()
    )(k)

  def program(platform):
    return jax.jit(dk).trace(x, k).lower(lowering_platforms=(platform,)).as_text()

  cpu = program("cpu")
  assert "stablehlo.while" in cpu
  assert "stablehlo.convolution" not in cpu
  for other in ("cuda", "tpu"):
    text = program(other)
    assert "stablehlo.while" not in text
    assert text.count("stablehlo.convolution") == 1


def test_other_convolutions_go_to_lax_unchanged():
  """Groups, dilation, NCHW and 1-D convolutions keep lax's own program."""
  x = jnp.ones((1, 12, 12, 4))
  nhwc = ("NHWC", "HWIO", "NHWC")
  cases = [
    (x, jnp.ones((3, 3, 2, 4)), dict(dimension_numbers=nhwc, feature_group_count=2)),
    (x, jnp.ones((3, 3, 4, 4)), dict(dimension_numbers=nhwc, rhs_dilation=(2, 2))),
    (x.transpose(0, 3, 1, 2), jnp.ones((4, 4, 3, 3)), dict(dimension_numbers=None)),
    (x[:, 0], jnp.ones((3, 4, 4)), dict(dimension_numbers=("NWC", "WIO", "NWC"))),
  ]
  for lhs, rhs, kwargs in cases:
    strides = (1,) * (lhs.ndim - 2)

    def program(conv, lhs=lhs, rhs=rhs, kwargs=kwargs, strides=strides):
      return str(jax.make_jaxpr(lambda a, b: conv(a, b, strides, "SAME", **kwargs))(lhs, rhs))

    ours = program(layers.conv_general_dilated)
    assert "custom_vjp" not in ours
    assert ours == program(lax.conv_general_dilated)


def test_conv_layer_matches_nn_conv_and_its_gradients(monkeypatch):
  """layers.Conv has nn.Conv's parameters and gives its outputs and parameter gradients."""
  monkeypatch.setattr(layers, "PER_IMAGE_WEIGHT_GRAD_MIN_FLOPS", 0)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  kwargs = dict(features=8, kernel_size=(5, 5), strides=2, padding=2)
  ours, ref = layers.Conv(**kwargs), nn.Conv(**kwargs)
  variables = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
    jnp.shape, variables
  )

  def grads(model):
    return jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x) ** 2)))(variables)

  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
