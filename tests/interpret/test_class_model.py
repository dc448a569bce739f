"""Class models (Simonyan et al. 2013, eq. 1): the analytic optimum of a linear model, a rising
objective, the optional jitter and blur, and the input checks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.interpret.class_model import class_model, objective

SHAPE = (6, 7, 3)


def _linear(w, b):
  """S_k(I) = <I, w[..., k]> + b_k, whose eq. 1 optimum is I* = w[..., k] / (2 l2)."""
  return lambda x: (jnp.einsum("nhwc,hwck->nk", x, w) + b, {})


def _weights(k=4, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(*SHAPE, k)).astype(np.float32), rng.normal(size=k).astype(np.float32)


class TinyCNN(nn.Module):
  """conv 3x3 -> ReLU -> max pool -> dense, with non-zero biases as in a trained network:
  with zero biases every ReLU would sit at 0 at the zero image, where its gradient is 0."""

  num_classes: int = 5

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(8, (3, 3), bias_init=nn.initializers.normal(0.5))(x)
    x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1)), {}


def test_linear_model_converges_to_the_analytic_optimum():
  w, b = _weights()
  model_fn, l2 = _linear(jnp.asarray(w), jnp.asarray(b)), 0.25
  # sgd: I <- I + lr (w - 2 l2 I), so the error shrinks by 1 - 2 l2 lr = 1/2 per step.
  images, history = class_model(
    model_fn,
    [0, 3, 1],
    image_shape=SHAPE,
    l2=l2,
    learning_rate=1.0,
    steps=40,
    return_objectives=True,
  )
  assert images.shape == (3, *SHAPE) and history.shape == (40, 3)
  optimum = np.moveaxis(w[..., [0, 3, 1]], -1, 0) / (2 * l2)
  np.testing.assert_allclose(images, optimum, rtol=0, atol=1e-5)
  # From the zero image the objective is the bias; at the optimum b + ||w||^2 / (4 l2).
  np.testing.assert_allclose(history[0], b[[0, 3, 1]], rtol=1e-6)
  best = b[[0, 3, 1]] + np.sum(optimum**2, axis=(1, 2, 3)) * l2
  np.testing.assert_allclose(history[-1], best, rtol=1e-5)
  np.testing.assert_allclose(objective(model_fn, images, jnp.array([0, 3, 1]), l2), best, rtol=1e-5)
  assert np.all(np.diff(history, axis=0) >= -1e-6 * np.abs(history).max())  # float32 rounding
  one = class_model(model_fn, 2, image_shape=SHAPE, l2=l2, learning_rate=1.0, steps=40)
  assert one.shape == SHAPE
  np.testing.assert_allclose(one, w[..., 2] / (2 * l2), rtol=0, atol=1e-5)


def test_objective_rises_on_a_small_cnn():
  model = TinyCNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  model_fn = functools.partial(model.apply, variables)
  images, history = class_model(
    model_fn,
    [0, 1, 2, 3, 4],
    image_shape=(8, 8, 3),
    l2=0.02,
    learning_rate=0.1,
    steps=60,
    return_objectives=True,
  )
  history = np.asarray(history)
  assert np.all(np.diff(history, axis=0) >= -1e-6), "the ascent went down"
  assert np.all(history[-1] - history[0] > 0.5)
  final = objective(model_fn, images, jnp.arange(5), 0.02)
  assert np.all(final >= history[-1])
  # Each image is most typical of its own class: its own logit is the largest.
  np.testing.assert_array_equal(np.argmax(model_fn(images)[0], axis=-1), np.arange(5))


def test_progress_bar_gives_the_same_images_as_scan():
  w, b = _weights()
  kwargs = dict(image_shape=SHAPE, l2=0.1, learning_rate=0.5, steps=8, jitter=2, blur_every=3)
  model_fn = _linear(jnp.asarray(w), jnp.asarray(b))
  scanned, h1 = class_model(model_fn, [1, 2], return_objectives=True, **kwargs)
  looped, h2 = class_model(model_fn, [1, 2], return_objectives=True, progress=True, **kwargs)
  np.testing.assert_allclose(looped, scanned, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(h2, h1, rtol=1e-6)


def test_jitter_is_seeded_and_leaves_a_shift_invariant_score_unchanged():
  w, b = _weights()
  kwargs = dict(image_shape=SHAPE, l2=0.25, learning_rate=1.0, steps=30)
  # A score that sums over all positions cannot see a roll: jitter changes nothing.
  v = jnp.asarray(w[0, 0])  # [C, K]
  pooled = lambda x: (jnp.einsum("nhwc,ck->nk", x, v), {})
  np.testing.assert_allclose(
    class_model(pooled, 1, jitter=3, **kwargs), class_model(pooled, 1, **kwargs), atol=1e-6
  )
  # A position-dependent score: jitter changes the image, reproducibly for one seed.
  model_fn = _linear(jnp.asarray(w), jnp.asarray(b))
  plain = class_model(model_fn, 1, **kwargs)
  a = class_model(model_fn, 1, jitter=2, seed=0, **kwargs)
  np.testing.assert_array_equal(a, class_model(model_fn, 1, jitter=2, seed=0, **kwargs))
  assert np.abs(a - plain).max() > 0.1
  assert np.abs(a - class_model(model_fn, 1, jitter=2, seed=1, **kwargs)).max() > 0.1


def test_blur_is_a_gaussian_filter_with_mirrored_edges():
  ndimage = pytest.importorskip("scipy.ndimage")
  w, b = _weights()
  model_fn = _linear(jnp.asarray(w), jnp.asarray(b))
  kwargs = dict(image_shape=SHAPE, l2=0.25, learning_rate=1.0, steps=6)
  plain = np.asarray(class_model(model_fn, 3, **kwargs))
  for sigma in (0.5, 1.0):
    # Blurring every 6th of 6 steps blurs only the final image.
    blurred = class_model(model_fn, 3, blur_every=6, blur_sigma=sigma, **kwargs)
    expected = ndimage.gaussian_filter(plain, sigma=(sigma, sigma, 0), mode="reflect", truncate=3)
    np.testing.assert_allclose(blurred, expected, rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_clear_errors():
  w, b = _weights(k=4)
  model_fn = _linear(jnp.asarray(w), jnp.asarray(b))
  ok = dict(image_shape=SHAPE, steps=2)
  with pytest.raises(ValueError, match=r"class_model: steps must be an int >= 1; received 0"):
    class_model(model_fn, 0, image_shape=SHAPE, steps=0)
  with pytest.raises(ValueError, match=r"steps must be an int >= 1; received -3"):
    class_model(model_fn, 0, image_shape=SHAPE, steps=-3)
  with pytest.raises(ValueError, match=r"steps must be an int >= 1; received 2.5"):
    class_model(model_fn, 0, image_shape=SHAPE, steps=2.5)
  for bad in [(6, 7), (1, 6, 7, 3), (0, 7, 3), (6.0, 7, 3), 6]:
    with pytest.raises(ValueError, match=r"class_model: image_shape must be \(H, W, C\).*received"):
      class_model(model_fn, 0, image_shape=bad, steps=2)
  with pytest.raises(ValueError, match=r"class_model: label must lie in \[0, 4\).*received 4\."):
    class_model(model_fn, 4, **ok)
  with pytest.raises(ValueError, match=r"label must lie in \[0, 4\).*received -1 among \[0, -1\]"):
    class_model(model_fn, [0, -1], **ok)
  with pytest.raises(ValueError, match=r"label must be an integer class index"):
    class_model(model_fn, 1.5, **ok)
  with pytest.raises(ValueError, match=r"label must be one class index or a vector \[K\]"):
    class_model(model_fn, [[0, 1]], **ok)
  with pytest.raises(ValueError, match=r"l2 must be >= 0; received -0.1"):
    class_model(model_fn, 0, l2=-0.1, **ok)
  with pytest.raises(ValueError, match=r"learning_rate must be > 0; received 0"):
    class_model(model_fn, 0, learning_rate=0, **ok)
  with pytest.raises(ValueError, match=r"jitter must be an int >= 0; received -1"):
    class_model(model_fn, 0, jitter=-1, **ok)
  with pytest.raises(ValueError, match=r"blur_sigma must be > 0 to blur; received 0"):
    class_model(model_fn, 0, blur_every=2, blur_sigma=0, **ok)
