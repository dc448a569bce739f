"""Saliency (Simonyan et al. 2013, eqs. 2-4): analytic maps, finite differences, Captum parity,
weakly supervised boxes, the pointing game and the input checks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.interpret.saliency import (
  pointing_game,
  saliency,
  saliency_batch,
  saliency_box,
  score_gradient,
)


def _linear(w):
  """S(I) = <I, w[..., k]> + b_k: its saliency is max over channels of |w[..., k]|."""
  b = jnp.arange(w.shape[-1], dtype=w.dtype)
  return lambda x: (jnp.einsum("nhwc,hwck->nk", x, w) + b, {})


class TinyCNN(nn.Module):
  """conv 3x3 -> ReLU -> max pool -> dense: the layers AlexNet's gradient passes through."""

  num_classes: int = 5

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    logits = nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
    return logits, {"pre_logits": x}


@functools.cache  # one init serves every test
def _tiny_cnn_fn(h=8, w=10):
  model = TinyCNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)))
  return functools.partial(model.apply, variables)


def test_linear_model_map_is_max_abs_weight_over_channels():
  w = np.random.default_rng(0).normal(size=(6, 7, 3, 4)).astype(np.float32)
  x = np.random.default_rng(1).normal(size=(6, 7, 3)).astype(np.float32)
  for label in range(4):
    m = saliency(_linear(jnp.asarray(w)), x, label)
    assert m.shape == (6, 7)
    np.testing.assert_allclose(m, np.abs(w[..., label]).max(-1), rtol=1e-6)
  grad = score_gradient(_linear(jnp.asarray(w)), x[None].repeat(2, 0), [1, 3])
  np.testing.assert_allclose(grad, np.moveaxis(w[..., [1, 3]], -1, 0), rtol=1e-6)


def test_gradient_equals_central_finite_differences():
  # float64, so the differences are exact to ~1e-9 and the test checks the gradient itself.
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.normal(size=(5 * 6 * 2, 8)))
    w2 = jnp.asarray(rng.normal(size=(8, 3)))
    model_fn = lambda x: (jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2, {})
    x = jnp.asarray(rng.normal(size=(5, 6, 2)))
    grad = np.asarray(score_gradient(model_fn, x[None], [2])[0])
    eps, fd = 1e-5, np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
      step = jnp.zeros(x.shape).at[index].set(eps)
      plus, minus = model_fn((x + step)[None])[0][0, 2], model_fn((x - step)[None])[0][0, 2]
      fd[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(saliency(model_fn, x, 2), np.abs(fd).max(-1), rtol=1e-6, atol=1e-8)


def test_cnn_map_equals_jax_grad_and_batch_equals_single_and_jit():
  model_fn = _tiny_cnn_fn()
  images = np.random.default_rng(0).normal(size=(3, 8, 10, 3)).astype(np.float32)
  labels = np.array([4, 0, 4])
  batch = saliency_batch(model_fn, images, labels)
  assert batch.shape == (3, 8, 10)
  score = lambda x, c: model_fn(x[None])[0][0, c]
  expected = np.abs(np.asarray(jax.vmap(jax.grad(score))(jnp.asarray(images), labels))).max(-1)
  assert expected.max(axis=(1, 2)).min() > 0  # every map is non-trivial
  np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=1e-7 * expected.max())
  jitted = jax.jit(lambda x, y: saliency(model_fn, x, y))
  for n in range(3):
    np.testing.assert_allclose(saliency(model_fn, images[n], labels[n]), expected[n], rtol=1e-6)
    np.testing.assert_allclose(jitted(images[n], labels[n]), expected[n], rtol=1e-5)
  np.testing.assert_allclose(
    jax.jit(lambda x, y: saliency_batch(model_fn, x, y))(images, labels), batch, rtol=1e-5
  )


def test_alexnet_map_equals_captum_saliency():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  captum_attr = pytest.importorskip("captum.attr")
  from research.convert import torchvision as tv  # pylint: disable=import-outside-toplevel
  from research.models.alexnet import AlexNet  # pylint: disable=import-outside-toplevel

  h, w = 96, 112  # not square, so a swapped H and W cannot pass
  torch.manual_seed(0)
  net = torchvision.models.alexnet(weights=None, num_classes=10).eval()
  model = AlexNet(num_classes=10)
  variables = tv.convert(net.state_dict(), model, input_shape=(1, h, w, 3))
  x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  labels = np.array([3, 7])
  ours = np.asarray(saliency_batch(functools.partial(model.apply, variables), x, labels))
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  grads = captum_attr.Saliency(net).attribute(
    x_nchw.requires_grad_(), target=torch.from_numpy(labels), abs=True
  )
  theirs = grads.amax(dim=1).detach().numpy()  # NCHW: the channel axis is 1
  assert ours.shape == theirs.shape == (2, h, w)
  scale = theirs.max()
  assert scale > 0
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)
  one = saliency(functools.partial(model.apply, variables), x[1], 7)
  np.testing.assert_allclose(one, theirs[1], rtol=0, atol=1e-4 * scale)


def _quantile_above(m, k):
  """The quantile whose threshold lies between the k largest values of `m` and the rest."""
  return (m.size - k - 0.5) / (m.size - 1)


def test_box_bounds_the_largest_component():
  m = np.random.default_rng(0).uniform(0, 0.1, size=(40, 50))
  m[10:20, 5:15] += 1.0  # 100 pixels: the largest component
  m[30:33, 40:43] += 2.0  # 9 brighter pixels: not the largest
  np.testing.assert_array_equal(saliency_box(m, quantile=_quantile_above(m, 109)), [5, 10, 15, 20])
  # Two halves of an object 3 px apart are one component once joined by a dilation.
  m = np.zeros((30, 30))
  m[5:10, 5:10] = m[12:17, 5:10] = 1.0
  m[20:26, 20:26] = 1.0  # 36 pixels > 25 per half
  np.testing.assert_array_equal(saliency_box(m, quantile=0.9), [20, 20, 26, 26])
  np.testing.assert_array_equal(saliency_box(m, quantile=0.9, dilation=2), [5, 5, 10, 17])
  # Equal sizes: the component with more saliency wins.
  m[20:26, 20:26] = 0.0
  m[12:17, 5:10] = 0.5
  np.testing.assert_array_equal(saliency_box(m, quantile=0.9), [5, 5, 10, 10])


def test_box_of_a_flat_or_single_peak_map_is_never_empty():
  np.testing.assert_array_equal(saliency_box(np.ones((6, 9))), [0, 0, 9, 6])
  m = np.zeros((6, 9))
  m[2, 7] = 1.0
  np.testing.assert_array_equal(saliency_box(m), [7, 2, 8, 3])


def test_box_with_image_grows_seeds_to_the_coloured_object():
  # A red square on a grey noisy background; its centre is the most salient (the seeds), the
  # rest of it moderately (unknown), the background little (background seeds and unknown).
  rng = np.random.default_rng(0)
  image = 0.5 + 0.02 * rng.normal(size=(48, 48, 3))
  image[12:30, 16:40] = [0.9, 0.1, 0.1]
  m = rng.uniform(0, 0.2, size=(48, 48))
  m[12:30, 16:40] += 0.3
  m[18:24, 24:32] = 1.0  # 48 pixels
  q = _quantile_above(m, 48)
  np.testing.assert_array_equal(saliency_box(m, quantile=q), [24, 18, 32, 24])
  np.testing.assert_array_equal(saliency_box(m, image, quantile=q), [16, 12, 40, 30])
  np.testing.assert_array_equal(saliency_box(m, 255 * image, quantile=q), [16, 12, 40, 30])


def test_pointing_game_hits_misses_and_boundary():
  maps = np.zeros((5, 10, 12))
  peaks = [(2, 3), (2, 3), (9, 11), (4, 4), (4, 4)]  # (row, column)
  for n, (i, j) in enumerate(peaks):
    maps[n, i, j] = 1.0
  boxes = np.array(
    [
      [3, 2, 4, 3],  # exactly the peak's pixel
      [4, 2, 8, 6],  # one column to the right of it
      [0, 0, 12, 10],  # the whole image
      [4.5, 4.5, 6, 6],  # the boundary passes through the pixel's centre: inclusive
      [4.6, 4.5, 6, 6],  # just past the centre
    ],
    np.float32,
  )
  np.testing.assert_array_equal(pointing_game(maps, boxes), [True, False, True, True, False])
  # The miss is 0.5 px from the box (centre x 3.5, box from x 4): a tolerance admits it.
  np.testing.assert_array_equal(
    pointing_game(maps, boxes, tolerance=0.5), [True, True, True, True, True]
  )
  np.testing.assert_array_equal(
    jax.jit(pointing_game)(maps, boxes), [True, False, True, True, False]
  )


def test_bad_image_label_and_shapes_raise_clear_errors():
  model_fn = _tiny_cnn_fn()  # 5 classes
  image = np.zeros((8, 10, 3), np.float32)
  with pytest.raises(ValueError, match=r"saliency: image must be one image of shape \[H, W, C\]"):
    saliency(model_fn, image[None], 0)
  with pytest.raises(ValueError, match=r"image .*received shape \(8, 10\) \(rank 2\)"):
    saliency(model_fn, image[..., 0], 0)
  with pytest.raises(ValueError, match=r"saliency: label must lie in \[0, 5\).*received 5\."):
    saliency(model_fn, image, 5)
  with pytest.raises(ValueError, match=r"label must lie in \[0, 5\).*received -1\."):
    saliency(model_fn, image, -1)
  with pytest.raises(ValueError, match=r"label must be an integer class index.*float"):
    saliency(model_fn, image, 1.0)
  with pytest.raises(ValueError, match=r"label must be one integer class index.*\(2,\)"):
    saliency(model_fn, image, [1, 2])
  with pytest.raises(ValueError, match=r"saliency_batch: images must be a batch .*\(8, 10, 3\)"):
    saliency_batch(model_fn, image, [0])
  with pytest.raises(ValueError, match=r"saliency_batch: labels must have shape \[N\] = \(2,\)"):
    saliency_batch(model_fn, np.stack([image, image]), [0])
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*received 9 among \[0, 9\]"):
    saliency_batch(model_fn, np.stack([image, image]), [0, 9])
  with pytest.raises(
    ValueError, match=r"saliency_box: saliency_map must be one map .*\(8, 10, 3\)"
  ):
    saliency_box(image)
  with pytest.raises(ValueError, match=r"saliency_box: quantile must lie in \(0, 1\); received 95"):
    saliency_box(image[..., 0], quantile=95)
  with pytest.raises(ValueError, match=r"saliency_box: image must be \[H, W, C\].*\(8, 10\)"):
    saliency_box(image[..., 0], np.zeros((10, 8, 3)))
  with pytest.raises(ValueError, match=r"pointing_game: boxes must be \[N, 4\] = \(2, 4\)"):
    pointing_game(np.zeros((2, 8, 10)), np.zeros((4,)))
  with pytest.raises(ValueError, match=r"pointing_game: saliency_maps must be \[N, H, W\]"):
    pointing_game(np.zeros((8, 10)), np.zeros((1, 4)))
