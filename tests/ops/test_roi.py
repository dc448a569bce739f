"""RoI Align and RoI pooling: values and feature gradients against torchvision.ops, shapes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.ops import roi

ATOL = 1e-4
N, H, W, C = 2, 12, 15, 3  # small maps: every code path, seconds to compile


def _rois(rng, scale, count=30):
  """[count, 5] rois in image coordinates of a (H / scale, W / scale) image, of five kinds:
  inside, partly outside, tiny (under a map pixel), large (beyond the map), inverted."""
  height, width = H / scale, W / scale
  out = []
  for i in range(count):
    kind = i % 5
    if kind == 0:
      x1, y1 = rng.uniform(0, 0.8 * width), rng.uniform(0, 0.8 * height)
      x2, y2 = x1 + rng.uniform(1, width / 2), y1 + rng.uniform(1, height / 2)
    elif kind == 1:
      x1, y1 = rng.uniform(-width / 3, width), rng.uniform(-height / 3, height)
      x2, y2 = x1 + rng.uniform(1, width / 2), y1 + rng.uniform(1, height / 2)
    elif kind == 2:
      x1, y1 = rng.uniform(0, width), rng.uniform(0, height)
      x2, y2 = x1 + rng.uniform(0, 0.7 / scale), y1 + rng.uniform(0, 0.7 / scale)
    elif kind == 3:
      x1, y1 = rng.uniform(-width / 4, 0), rng.uniform(-height / 4, 0)
      x2, y2 = rng.uniform(0.9 * width, 1.2 * width), rng.uniform(0.9 * height, 1.2 * height)
    else:  # whole pixels, x2 < x1
      x1, y1 = float(rng.integers(0, width)), float(rng.integers(0, height))
      x2, y2 = x1 - rng.uniform(0, 3), y1 + float(rng.integers(0, 20))
    out.append([rng.integers(0, N), x1, y1, x2, y2])
  return np.array(out, np.float32)


def _check_against_torch(ours_fn, torch_fn, features, rois, output_size, seed):
  """ours_fn(features, rois) NHWC and torch_fn(x, rois) NCHW: values and feature gradients."""
  torch = pytest.importorskip("torch")
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  cotangent = np.random.default_rng(seed).normal(size=(len(rois), oh, ow, C)).astype(np.float32)
  x = torch.tensor(features.transpose(0, 3, 1, 2).copy(), requires_grad=True)
  expected = torch_fn(x, torch.tensor(rois))
  expected.backward(torch.tensor(cotangent.transpose(0, 3, 1, 2).copy()))

  ours = ours_fn(jnp.asarray(features), rois)
  grad = jax.grad(lambda f: (ours_fn(f, rois) * cotangent).sum())(jnp.asarray(features))
  assert ours.shape == (len(rois), oh, ow, C)
  np.testing.assert_allclose(ours, expected.detach().numpy().transpose(0, 2, 3, 1), atol=ATOL)
  np.testing.assert_allclose(grad, x.grad.numpy().transpose(0, 2, 3, 1), atol=ATOL)


# Every (aligned, sampling_ratio) pair, with both scales and both output sizes.
ALIGN_CASES = [
  (False, 1, 1 / 16, 7),
  (True, 1, 0.5, (3, 5)),
  (False, 2, 0.5, 7),
  (True, 2, 1 / 16, (3, 5)),
  (False, 0, 1 / 16, (3, 5)),
  (True, 0, 0.5, 7),
  (False, -1, 0.5, (3, 5)),
  (True, -1, 1 / 16, 7),
]


@pytest.mark.parametrize("aligned,sampling_ratio,scale,output_size", ALIGN_CASES)
def test_roi_align_matches_torchvision(aligned, sampling_ratio, scale, output_size):
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(int(aligned) * 10 + sampling_ratio + 2)
  features = rng.normal(size=(N, H, W, C)).astype(np.float32)
  rois = _rois(rng, scale)
  # Large rois need more adaptive samples than the default bound (rois inside the map).
  kw = dict(spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned, max_samples=8)
  _check_against_torch(
    lambda f, r: roi.roi_align(f, r, output_size, **kw),
    lambda x, r: ops.roi_align(x, r, output_size, scale, sampling_ratio, aligned),
    features,
    rois,
    output_size,
    seed=1,
  )


@pytest.mark.parametrize("scale,output_size", [(1 / 16, 7), (0.5, (3, 5))])
def test_roi_align_default_bound_covers_rois_inside_the_map(scale, output_size):
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(3)
  features = rng.normal(size=(N, H, W, C)).astype(np.float32)
  # Whole-map rois need the most samples: ceil(H / oh) per bin.
  whole = [[0, 0, 0, W / scale, H / scale], [1, 0, 0, W / scale, H / scale]]
  rois = np.concatenate([_rois(rng, scale)[::5], np.array(whole, np.float32)])
  _check_against_torch(
    lambda f, r: roi.roi_align(f, r, output_size, spatial_scale=scale, sampling_ratio=0),
    lambda x, r: ops.roi_align(x, r, output_size, scale, 0, False),
    features,
    rois,
    output_size,
    seed=2,
  )


@pytest.mark.parametrize(
  "scale,output_size,relu", [(1 / 16, 7, False), (0.5, (3, 5), False), (0.5, 7, True)]
)
def test_roi_pool_matches_torchvision(scale, output_size, relu):
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(4)
  features = rng.normal(size=(N, H, W, C)).astype(np.float32)
  if relu:  # ties at 0: the gradient must go to the first maximum, as torchvision's
    features = np.maximum(features, 0)
  rois = _rois(rng, scale)
  _check_against_torch(
    lambda f, r: roi.roi_pool(f, r, output_size, spatial_scale=scale, max_bin_size=8),
    lambda x, r: ops.roi_pool(x, r, output_size, scale),
    features,
    rois,
    output_size,
    seed=5,
  )


def test_roi_align_sample_exactly_on_the_edge_counts_as_torchvision():
  ops = pytest.importorskip("torchvision.ops")
  torch = pytest.importorskip("torch")
  # Rows 7.5..13.5 in 7 bins of 6/7: a sample of bin 5 lands on y = 12.0 = H, still
  # valid; 6 * (1 / 7), XLA's rewrite of 6 / 7, rounds it past the edge.
  features = np.random.default_rng(7).normal(size=(1, H, W, C)).astype(np.float32)
  rois = np.tile(np.array([[0, 21.0, 15.0, 18.4, 27.0]], np.float32), (8, 1))  # vectorised
  ours = roi.roi_align(features, rois, 7, spatial_scale=0.5, sampling_ratio=2)
  x = torch.tensor(features.transpose(0, 3, 1, 2).copy())
  expected = ops.roi_align(x, torch.tensor(rois), 7, 0.5, 2, False).numpy()
  np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), atol=ATOL)


def test_roi_align_of_a_ramp_is_the_ramp_at_the_sample_points():
  # Bilinear interpolation of f(y, x) = x is exact: a 2x2 grid over (0, 0)-(4, 4),
  # aligned, one sample per bin, samples the bin centres x = 0.5 and 2.5.
  features = jnp.broadcast_to(jnp.arange(6.0)[None, None, :, None], (1, 6, 6, 2))
  rois = jnp.array([[0.0, 0.0, 0.0, 4.0, 4.0]])
  out = roi.roi_align(features, rois, 2, sampling_ratio=1, aligned=True)
  np.testing.assert_allclose(out[0, :, :, 0], [[0.5, 2.5], [0.5, 2.5]], atol=1e-6)


def test_roi_pool_takes_each_bins_max():
  # On 0..35 row-major every bin's max is its bottom-right pixel.
  features = jnp.arange(36.0).reshape(1, 6, 6, 1)
  rois = jnp.array([[0.0, 0.0, 0.0, 5.0, 5.0]])  # 6x6 pixels, 3x3 bins of 2x2
  out = roi.roi_pool(features, rois, 3)
  np.testing.assert_array_equal(out[0, :, :, 0], [[7, 9, 11], [19, 21, 23], [31, 33, 35]])


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_jit_with_traced_rois_matches_eager(op):
  rng = np.random.default_rng(6)
  features = jnp.asarray(rng.normal(size=(N, H, W, C)).astype(np.float32))
  rois = jnp.asarray(_rois(rng, 0.5)[::5])  # inside, within the default bounds
  fn = getattr(roi, op)
  kw = dict(spatial_scale=0.5) | ({"sampling_ratio": 2} if op == "roi_align" else {})
  eager = fn(features, rois, (3, 5), **kw)
  jitted = jax.jit(lambda f, r: fn(f, r, (3, 5), **kw))(features, rois)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  grad = jax.jit(jax.grad(lambda f, r: fn(f, r, (3, 5), **kw).sum()))(features, rois)
  assert grad.shape == features.shape and np.isfinite(grad).all()


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_no_rois_give_an_empty_batch(op):
  out = getattr(roi, op)(jnp.zeros((1, 4, 4, 3)), jnp.zeros((0, 5)), (2, 3))
  assert out.shape == (0, 2, 3, 3)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
@pytest.mark.parametrize(
  "features_shape,rois,kw,match",
  [
    ((4, 4, 3), [[0, 0, 0, 2, 2]], {}, r"features must be \[N, H, W, C\].*\(4, 4, 3\)"),
    ((1, 4, 4, 3), [[0, 0, 2, 2]], {}, r"rois must be \[R, 5\].*\(1, 4\)"),
    ((2, 4, 4, 3), [[0, 0, 0, 2, 2], [2, 0, 0, 2, 2]], {}, r"\[0, 2\).*N=2.*2\.0 at roi 1"),
    ((1, 4, 4, 3), [[-1, 0, 0, 2, 2]], {}, r"batch indices in \[0, 1\).*-1\.0 at roi 0"),
    ((1, 4, 4, 3), [[0.5, 0, 0, 2, 2]], {}, r"integer batch indices"),
    ((1, 4, 4, 3), [[0, 0, 0, 2, 2]], {"output_size": 0}, r"output_size must be >= 1"),
    ((1, 4, 4, 3), [[0, 0, 0, 2, 2]], {"spatial_scale": 0.0}, r"spatial_scale must be"),
  ],
)
def test_bad_arguments_raise(op, features_shape, rois, kw, match):
  kw = {"output_size": 2} | kw
  with pytest.raises(ValueError, match=f"{op}: .*{match}"):
    getattr(roi, op)(jnp.zeros(features_shape), jnp.array(rois, jnp.float32), **kw)


def test_rois_beyond_the_static_bounds_raise_with_the_bound_to_pass():
  features = jnp.zeros((1, 8, 8, 1))
  big = jnp.array([[0.0, -20.0, -20.0, 40.0, 40.0]])  # 60 pixels: 30 per bin of 2
  with pytest.raises(ValueError, match=r"roi_align: .*roi 0 .*needs \(30, 30\).*max_samples>=30"):
    roi.roi_align(features, big, 2, sampling_ratio=0)
  roi.roi_align(features, big, 2, sampling_ratio=0, max_samples=30)
  roi.roi_align(features, big, 2, sampling_ratio=2)  # a fixed ratio has no bound
  # Bins clipped to the map: 8 pixels, more than max_bin_size=3 covers (4).
  with pytest.raises(ValueError, match=r"roi_pool: .*\(4, 4\) pixels.*bin of \(8, 8\).*>=8"):
    roi.roi_pool(features, big, 1, max_bin_size=3)
  roi.roi_pool(features, big, 1)  # the default covers the whole map
