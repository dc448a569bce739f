"""FCN: transposed convolutions, crop offsets, output sizes, parameter counts, the
convolutionalized VGG ("sliding window for free"), and FCN-ResNet50 against torchvision."""

import functools
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.convert import torchvision as tv
from research.models import fcn, resnet, vgg
from research.models.alexnet import flatten_chw
from research.ops.kernels import bilinear_upsampling
from research.train.state import param_count

# VGG16's geometry (13 convs, 5 pools: stride 32, fc6 7x7) at a width tests can afford.
TINY_CFG = (8, 8, "M", 8, 8, "M", 16, 16, 16, "M", 16, 16, 16, "M", 16, 16, 16, "M")
TINY = {"cfg": TINY_CFG, "hidden": 32}


def _abstract(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))


def _normal(seed, shape):
  """Standard normal numbers from NumPy (a jax.random draw compiles for each shape)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _random_variables(abstract, seed=0):
  """Variables of these shapes drawn by NumPy (compiling `init` costs seconds): He-scaled
  kernels, small biases."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "kernel":
      scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    else:
      scale = 0.1
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _zeros(abstract):
  return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract)


def _logits_shape(model, shape):
  variables = _abstract(model, shape)
  return jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape))[0], variables).shape


# Transposed convolutions.


@pytest.mark.parametrize("stride, k", [(2, 4), (3, 5), (3, 3), (4, 8)])
def test_conv_transpose_is_flax_conv_transpose_with_the_kernel_flipped(stride, k):
  x = _normal(0, (2, 5, 4, 3))
  kernel = _normal(1, (k, k, 3, 2))  # asymmetric
  layer = nn.ConvTranspose(2, (k, k), strides=(stride, stride), padding="VALID", use_bias=False)
  expected = jax.jit(layer.apply)({"params": {"kernel": kernel}}, x)
  got = jax.jit(fcn.conv_transpose, static_argnums=2)(x, kernel[::-1, ::-1], stride)
  assert got.shape == ((2, 4 * stride + k, 3 * stride + k, 2))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # A [k, k] kernel is the same kernel on the diagonal: each channel alone.
  diagonal = jnp.einsum("hw,io->hwio", kernel[..., 0, 0], jnp.eye(3))
  transpose = jax.jit(fcn.conv_transpose, static_argnums=2)
  np.testing.assert_allclose(
    transpose(x, kernel[..., 0, 0], stride), transpose(x, diagonal, stride), atol=1e-5
  )


def test_conv_transpose_equals_torch_conv_transpose2d():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 6, 5, 3)).astype(np.float32)
  kernel = np.random.default_rng(1).normal(size=(16, 16, 3, 4)).astype(np.float32)
  layer = torch.nn.ConvTranspose2d(3, 4, 16, stride=8, bias=False)
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(kernel.transpose(2, 3, 0, 1)))  # [in, out, kh, kw]
    expected = layer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  got = jax.jit(fcn.conv_transpose, static_argnums=2)(x, kernel, 8)
  np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_kernel_upsamples_a_constant_to_a_constant_in_the_interior(factor):
  """Away from the border every output pixel gets the kernel's phases summing to one.

  With kernel 2f and stride f the pixels [f, h f) see two inputs along each axis; the
  first and last f see one (the transposed convolution's border, which FCN crops away).
  """
  h, c = 5, 3
  k = 2 * factor
  x = jnp.full((1, h, h, c), 2.5)
  kernel = jnp.einsum("hw,io->hwio", bilinear_upsampling(factor), jnp.eye(c))
  layer = nn.ConvTranspose(c, (k, k), strides=(factor, factor), padding="VALID", use_bias=False)
  reference = jax.jit(layer.apply)({"params": {"kernel": kernel}}, x)
  fixed = jax.jit(fcn.BilinearUpsampling(factor).apply)({}, x)
  learnable = fcn.BilinearUpsampling(factor, learnable=True)
  learned, variables = jax.jit(learnable.init_with_output)(jax.random.key(0, impl="rbg"), x)
  np.testing.assert_array_equal(variables["params"]["kernel"], kernel)
  for y in (reference, fixed, learned):
    assert y.shape == (1, (h + 1) * factor, (h + 1) * factor, c)
    np.testing.assert_allclose(y[0, factor : h * factor, factor : h * factor], 2.5, rtol=1e-6)
    assert float(jnp.abs(y[0, 0, 0] - 2.5).max()) > 0.1  # the border is not constant


def test_learnable_upsampling_is_nn_conv_transpose_on_its_kernel():
  x = _normal(0, (1, 4, 3, 5))
  module = fcn.BilinearUpsampling(2, learnable=True)
  kernel = _normal(1, (4, 4, 5, 5))
  layer = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="VALID", use_bias=False)
  np.testing.assert_allclose(
    jax.jit(module.apply)({"params": {"kernel": kernel}}, x),
    jax.jit(layer.apply)({"params": {"kernel": kernel}}, x),
    atol=1e-5,
  )


# Geometry.


def _coord(layers):
  """Caffe's coord_map for a chain: input x = a * y + b for output pixel y's centre.

  (kind, kernel, stride, pad): a conv or pool puts output y's window centre at
  s y + (k - 1) / 2 - p; a transposed conv ("up") inverts that.
  """
  a, b = Fraction(1), Fraction(0)
  for kind, k, s, p in layers:
    la, lb = Fraction(s), Fraction(k - 1, 2) - p
    if kind == "up":
      la, lb = 1 / la, -lb / la
    a, b = a * la, a * lb + b
  return a, b


def _offset(top, reference):
  """The crop offset of map `top` onto `reference` (Caffe's crop with coord_map)."""
  (a, b), (ra, rb) = _coord(top), _coord(reference)
  assert a == ra
  offset = (rb - b) / a
  assert offset.denominator == 1 and offset >= 0
  return int(offset)


def test_crop_offsets_are_the_reference_coordinate_maps():
  block = lambda n: [("conv", 3, 1, 1)] * n + [("pool", 2, 2, 0)]
  pool3 = [("conv", 3, 1, 100), *block(2)[1:], *block(2), *block(3)]  # conv1_1 pads 100
  pool4 = pool3 + block(3)
  pool5 = pool4 + block(3)
  score_fr = pool5 + [("conv", 7, 1, 0), ("conv", 1, 1, 0), ("conv", 1, 1, 0)]
  score_pool4, score_pool3 = pool4 + [("conv", 1, 1, 0)], pool3 + [("conv", 1, 1, 0)]
  upscore2 = score_fr + [("up", 4, 2, 0)]
  upscore_pool4 = upscore2 + [("up", 4, 2, 0)]
  assert fcn.CROPS == {
    "upscore": _offset(score_fr + [("up", 64, 32, 0)], []),
    "score_pool4c": _offset(score_pool4, upscore2),
    "upscore16": _offset(upscore2 + [("up", 32, 16, 0)], []),
    "score_pool3c": _offset(score_pool3, upscore_pool4),
    "upscore8": _offset(upscore_pool4 + [("up", 16, 8, 0)], []),
  }
  assert _coord(pool5)[0] == 32


@pytest.mark.parametrize("variant", [fcn.FCN32s, fcn.FCN16s, fcn.FCN8s])
def test_logits_have_the_input_size_for_every_size_modulo_32(variant):
  """Pad 100 and ceil-mode pools leave enough to crop for any size, including 1x1. For
  FCN-32s every residue mod 32 (where the pools' rounding differs) is here, H and W 16
  apart; the skips' crops, whose margins are wider, see a few."""
  model = variant(num_classes=3, **TINY)
  residues = range(16) if variant is fcn.FCN32s else (0, 5, 10, 13)
  sizes = [(1, 2), (5, 31)] + [(200 + r, 216 + r) for r in residues]
  for h, w in sizes:
    assert _logits_shape(model, (1, h, w, 3)) == (1, h, w, 3)


def test_fcn8s_out_holds_the_reference_layers():
  model = fcn.FCN8s(num_classes=5, **TINY)
  variables = _abstract(model, (1, 64, 48, 3))
  _, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 48, 3))), variables)
  shapes = {k: v.shape for k, v in out.items()}
  # 64 + 198 = 262 -> pools (ceil) 131, 66, 33, 17, 9; 48 + 198 = 246 -> 123, 62, 31, 16, 8.
  assert shapes["pool3"] == (1, 33, 31, 16)
  assert shapes["pool4"] == (1, 17, 16, 16)
  assert shapes["pool5"] == (1, 9, 8, 16)
  assert shapes["score_fr"] == (1, 3, 2, 5)
  assert shapes["upscore2"] == (1, 8, 6, 5) == shapes["score_pool4c"] == shapes["fuse_pool4"]
  assert shapes["upscore_pool4"] == (1, 18, 14, 5) == shapes["score_pool3c"]
  assert shapes["upscore8"] == (1, 17 * 8 + 16, 13 * 8 + 16, 5)
  assert shapes["score"] == (1, 64, 48, 5)
  assert {"conv1_1", "relu5_3", "fc6", "relu6", "fc7", "relu7", "fuse_pool3"} <= set(shapes)
  assert set(variables["params"]) == {
    *(f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
    *("fc6", "fc7", "score_fr", "score_pool4", "score_pool3"),
  }


COUNTS = {"FCN32s": 134_346_581, "FCN16s": 134_357_354, "FCN8s": 134_362_751}


@pytest.mark.parametrize("name", COUNTS)
def test_parameter_counts_with_21_classes(name):
  model = getattr(fcn, name)(num_classes=21)
  assert param_count(_abstract(model, (1, 32, 32, 3))["params"]) == COUNTS[name]
  # VGG16 without fc8, plus the 1x1 score layers on fc7, pool4, pool3: the paper's "134M".
  inputs = {"FCN32s": (4096,), "FCN16s": (4096, 512), "FCN8s": (4096, 512, 256)}[name]
  score_layers = sum(c * 21 + 21 for c in inputs)
  assert COUNTS[name] == 138_357_544 - (4096 * 1000 + 1000) + score_layers


def test_learnable_upsampling_adds_the_papers_kernels():
  model = fcn.FCN8s(num_classes=21, learnable_upsampling=("upscore2", "upscore_pool4"))
  params = _abstract(model, (1, 32, 32, 3))["params"]
  assert params["upscore2"]["kernel"].shape == (4, 4, 21, 21)
  assert param_count(params) == COUNTS["FCN8s"] + 2 * 4 * 4 * 21 * 21
  with pytest.raises(ValueError, match="learnable_upsampling names layers"):
    _abstract(fcn.FCN32s(learnable_upsampling=("upscore8",), **TINY), (1, 32, 32, 3))


@pytest.mark.parametrize(
  "model, match",
  [
    (fcn.FCN8s(num_classes=0), "num_classes must be >= 1"),
    (fcn.FCN(stride=4), "stride must be 32, 16 or 8"),
  ],
)
def test_wrong_configurations_say_what_is_expected(model, match):
  with pytest.raises(ValueError, match=match):
    _abstract(model, (1, 32, 32, 3))


def test_scores_start_at_zero_and_the_first_gradient_reaches_every_score_layer():
  """The score layers are zero-initialized (Caffe's default filler), so the logits start
  at zero. The first gradient reaches the score layers (their inputs are not zero) and
  nothing below them (it passes through their zero kernels) nor the learnable upsampling
  (its input, the score map, is zero)."""
  model = fcn.FCN8s(num_classes=4, learnable_upsampling=("upscore2",), **TINY)
  x = _normal(0, (2, 40, 36, 3))
  labels = jnp.asarray(np.random.default_rng(1).integers(0, 4, (2, 40, 36)))
  # An rbg key: compiling init with threefry keys takes seconds here.
  variables = jax.jit(model.init)(jax.random.key(2, impl="rbg"), x)

  def loss(params):
    logits, _ = model.apply(
      {"params": params}, x, train=True, rngs={"dropout": jax.random.key(3, impl="rbg")}
    )
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1).sum()
    return nll, logits

  grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  np.testing.assert_array_equal(logits, 0.0)
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree))))
  norms = {k: norm(v) for k, v in grads.items()}
  assert all(np.isfinite(list(norms.values())))
  for name in ("score_fr", "score_pool4", "score_pool3"):
    assert norms[name] > 0, name
  # Zero score maps give the learnable upsampling and everything below nothing yet.
  assert norms["upscore2"] == 0 and norms["fc7"] == 0 and norms["features.0"] == 0


# Convolutionalization: the classifier as convolutions.


@pytest.fixture(scope="module")
def tiny_vgg():
  """A VGG16-shaped classifier at small width, with fc weights that give O(1) logits."""
  model = vgg.VGG(cfg=TINY_CFG, hidden=64, num_classes=10)
  return model, _random_variables(_abstract(model, (1, 224, 224, 3)))


def _classifier(params, pool5):
  """VGG's Dense classifier on a [N, 7, 7, C] pool5 map (eval: no dropout)."""
  dense = lambda name, x: x @ params[name]["kernel"] + params[name]["bias"]
  x = jax.nn.relu(dense("classifier.0", flatten_chw(pool5)))
  return dense("classifier.6", jax.nn.relu(dense("classifier.3", x)))


def test_convolutionalized_vgg_at_224_is_the_classifier(tiny_vgg):
  model, variables = tiny_vgg
  x = _normal(1, (2, 224, 224, 3))
  logits, vgg_out = jax.jit(model.apply)(variables, x)
  conv = fcn.ConvolutionalizedVGG(num_classes=10, cfg=TINY_CFG, hidden=64)
  scores, out = jax.jit(conv.apply)(fcn.convolutionalize(variables), x)
  assert scores.shape == (2, 1, 1, 10)
  assert 0.3 < float(jnp.abs(logits).mean()) < 30  # O(1): an absolute 1e-4 means something
  np.testing.assert_allclose(scores[:, 0, 0], logits, atol=1e-4)
  np.testing.assert_allclose(out["fc6"][:, 0, 0], vgg_out["fc6"], atol=1e-4)


def test_sliding_window_for_free(tiny_vgg):
  """A 288x288 image gives a 3x3 score map in one pass: cell (i, j) is the classifier
  applied to the 7x7 window (i, j) of pool5, to 1e-4: the fc layers as convs are exactly
  the classifier slid over pool5 at stride 1, i.e. over the image at stride 32.

  It is not the classifier run on the 224x224 crop of the image at (32 i, 32 j): VGG's
  convs pad by 1 with zeros, so in the crop alone the pixels at the window's border see
  zeros where the whole image has neighbours, and the difference reaches every pool5 cell
  whose receptive field (212 pixels for VGG16) crosses the window's border. Only the
  centre cell (3, 3) of the crop's pool5 (receptive field rows 6..217) sees no padding,
  and it equals the whole image's pool5 cell (3 + i, 3 + j).
  """
  model, variables = tiny_vgg
  x = _normal(2, (1, 288, 288, 3))
  conv = fcn.ConvolutionalizedVGG(num_classes=10, cfg=TINY_CFG, hidden=64)
  scores, out = jax.jit(conv.apply)(fcn.convolutionalize(variables), x)
  assert scores.shape == (1, 3, 3, 10)
  assert 0.3 < float(jnp.abs(scores).mean()) < 30
  features = {k: v for k, v in variables["params"].items() if k.startswith("features.")}
  _, vgg_out = jax.jit(vgg.VGG(cfg=TINY_CFG, num_classes=0).apply)({"params": features}, x)
  pool5 = vgg_out["pool5"]
  np.testing.assert_allclose(out["pool5"], pool5, rtol=1e-5, atol=1e-5)
  cells = [(i, j) for i in range(3) for j in range(3)]
  for i, j in cells:
    window = _classifier(variables["params"], pool5[:, i : i + 7, j : j + 7])
    np.testing.assert_allclose(scores[:, i, j], window, atol=1e-4)
  crops = jnp.concatenate([x[:, 32 * i : 32 * i + 224, 32 * j : 32 * j + 224] for i, j in cells])
  logits, crop_out = jax.jit(model.apply)(variables, crops)
  for n, (i, j) in enumerate(cells):
    np.testing.assert_allclose(
      crop_out["pool5"][n, 3, 3], pool5[0, 3 + i, 3 + j], rtol=1e-5, atol=1e-5
    )
    # The zero padding's effect on the whole crop, documented above.
    assert float(jnp.abs(logits[n] - scores[0, i, j]).max()) > 1e-2


def test_convolutionalize_reshapes_vgg16_into_every_fcn():
  """VGG16's variables become FCN's: features.N as they are, fc6/fc7 reshaped, fc8 the
  score layer when the classes agree (shapes traced, no 138M random numbers)."""
  vgg16 = _abstract(vgg.VGG16(), (1, 224, 224, 3))
  params = jax.eval_shape(fcn.convolutionalize, vgg16)["params"]
  shapes = lambda tree: {k: v.shape for k, v in traverse_util.flatten_dict(tree).items()}
  assert shapes(params) == shapes(_abstract(fcn.FCN32s(num_classes=1000), (1, 32, 32, 3))["params"])
  assert params["fc6"]["kernel"].shape == (7, 7, 512, 4096)
  assert params["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
  assert "score_fr" not in jax.eval_shape(lambda v: fcn.convolutionalize(v, 21), vgg16)["params"]


def test_convolutionalize_into_an_fcn_keeps_its_new_layers(tiny_vgg):
  _, variables = tiny_vgg
  init = lambda model: _zeros(_abstract(model, (1, 32, 32, 3)))  # values are not read
  into = init(fcn.FCN16s(num_classes=21, cfg=TINY_CFG, hidden=64))
  merged = fcn.convolutionalize(variables, into=into)
  assert set(merged["params"]) == set(into["params"])
  np.testing.assert_array_equal(merged["params"]["score_fr"]["kernel"], 0.0)  # 21 != 10
  np.testing.assert_array_equal(
    merged["params"]["fc6"]["kernel"][2, 5, :, 7],
    variables["params"]["classifier.0"]["kernel"][np.arange(16) * 49 + 2 * 7 + 5, 7],
  )
  same = fcn.convolutionalize(
    variables, into=init(fcn.FCN32s(num_classes=10, cfg=TINY_CFG, hidden=64))
  )
  np.testing.assert_array_equal(
    same["params"]["score_fr"]["kernel"][0, 0], variables["params"]["classifier.6"]["kernel"]
  )
  with pytest.raises(ValueError, match="fc6/kernel"):  # hidden 32, not the VGG's 64
    fcn.convolutionalize(variables, into=init(fcn.FCN32s(num_classes=10, **TINY)))


def test_a_vgg_bn_convolutionalizes_with_its_statistics_into_a_batch_norm_fcn():
  """FCN(batch_norm=True) has VGG-BN's trunk (torchvision's vgg16_bn names: conv, BatchNorm,
  ReLU at features.N, N+1, N+2); a VGG-BN's variables, running statistics included, give
  its logits at 224."""
  model = vgg.VGG(cfg=TINY_CFG, hidden=64, num_classes=10, batch_norm=True)
  abstract = _abstract(model, (1, 224, 224, 3))
  variables = _random_variables(abstract)
  # Running statistics away from (0, 1), so that dropping them would show.
  variables["batch_stats"] = jax.tree.map(
    lambda v: v + 0.5 * jnp.abs(_normal(3, v.shape)), variables["batch_stats"]
  )
  x = _normal(1, (1, 224, 224, 3))
  logits, _ = jax.jit(model.apply)(variables, x)
  conv = fcn.ConvolutionalizedVGG(num_classes=10, cfg=TINY_CFG, hidden=64, batch_norm=True)
  converted = fcn.convolutionalize(variables)
  assert (
    set(converted["batch_stats"])
    == set(variables["batch_stats"])
    == {f"features.{i}" for i in (1, 4, 8, 11, 15, 18, 21, 25, 28, 31, 35, 38, 41)}
  )
  scores, _ = jax.jit(conv.apply)(converted, x)
  np.testing.assert_allclose(scores[:, 0, 0], logits, rtol=1e-4, atol=1e-4)
  fcn8 = fcn.FCN8s(num_classes=3, cfg=TINY_CFG, hidden=64, batch_norm=True)
  into = _zeros(_abstract(fcn8, (1, 32, 32, 3)))
  merged = fcn.convolutionalize(variables, into=into)
  assert set(merged["batch_stats"]) == set(into["batch_stats"])
  np.testing.assert_array_equal(
    merged["batch_stats"]["features.1"]["var"], variables["batch_stats"]["features.1"]["var"]
  )


# FCN-ResNet.


def test_dilated_resnet_keeps_stride_8_with_the_same_parameters():
  tiny = functools.partial(
    resnet.ResNet, stage_sizes=(1, 2, 2, 2), block_cls=resnet.Bottleneck, num_filters=4
  )
  plain, dilated = tiny(num_classes=0), tiny(num_classes=0, replace_stride_with_dilation=(0, 1, 1))
  assert dilated.feature_strides == {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 8, "stage4": 8}
  assert plain.feature_strides["stage4"] == 32
  x = jnp.zeros((1, 64, 64, 3))
  shapes = lambda v: jax.tree.map(lambda a: a.shape, v)
  assert shapes(_abstract(plain, x.shape)) == shapes(_abstract(dilated, x.shape))
  _, out = jax.eval_shape(lambda: dilated.init_with_output(jax.random.PRNGKey(0), x)[0])
  assert out["stage3"].shape == (1, 8, 8, 64) and out["stage4"].shape == (1, 8, 8, 128)
  with pytest.raises(ValueError, match="replace_stride_with_dilation needs one bool"):
    _abstract(tiny(replace_stride_with_dilation=(True,)), x.shape)
  with pytest.raises(ValueError, match="BasicBlock: dilation must be 1"):
    _abstract(resnet.ResNet18(replace_stride_with_dilation=(0, 0, 1)), x.shape)


def test_tiny_fcn_resnet_gives_logits_and_aux_at_the_input_size():
  model = fcn.FCNResNet(stage_sizes=(1, 1, 1, 1), num_filters=4, num_classes=3, aux_loss=True)
  x = jnp.zeros((2, 37, 50, 3))
  variables = _abstract(model, x.shape)
  logits, out = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert logits.shape == out["aux"].shape == (2, 37, 50, 3)
  assert out["classifier"].shape == out["aux_classifier"].shape == (2, 5, 7, 3)
  assert set(variables["params"]) == {"backbone", "classifier", "aux_classifier"}
  assert set(variables["params"]["classifier"]) == {"0", "1", "4"}


def test_fcn_resnet50_equals_torchvision_on_a_photograph():
  """torchvision's fcn_resnet50 (random weights, seed 0, batch norm statistics drawn too),
  converted key by key: "out" and "aux" agree on a 180x220 astronaut (stride 8 maps of
  23x28, so the bilinear resize has non-integer scales)."""
  torch = pytest.importorskip("torch")
  segmentation = pytest.importorskip("torchvision.models.segmentation")
  skimage = pytest.importorskip("skimage")
  torch.manual_seed(0)
  net = segmentation.fcn_resnet50(
    weights=None, weights_backbone=None, num_classes=21, aux_loss=True
  )
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  net.eval()
  image = skimage.transform.resize(skimage.data.astronaut(), (180, 220), anti_aliasing=True)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = ((image - mean) / std).astype(np.float32)[None]
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  expected = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in expected.items()}

  model = fcn.FCN_ResNet50(num_classes=21, aux_loss=True)
  variables = tv.convert(net.state_dict(), model, input_shape=x.shape)
  count = sum(p.numel() for p in net.parameters())
  assert param_count(variables["params"]) == count == 35_322_218
  logits, out = jax.jit(model.apply)(variables, jnp.asarray(x))
  for got, name in ((logits, "out"), (out["aux"], "aux")):
    scale = float(np.abs(expected[name]).max())
    assert scale > 0.1
    np.testing.assert_allclose(got, expected[name], atol=1e-5 * scale, err_msg=name)
    # Every pixel's class is torchvision's, but where its two best logits tie to within the
    # tolerance (1 pixel of 39,600 on an AMD EPYC with AVX2): there either class is right.
    ours, theirs = np.argmax(got, -1), np.argmax(expected[name], -1)
    best = np.take_along_axis(expected[name], theirs[..., None], -1)[..., 0]
    chosen = np.take_along_axis(expected[name], np.asarray(ours)[..., None], -1)[..., 0]
    tie = best - chosen <= 2e-5 * scale
    assert np.all((ours == theirs) | tie), (name, np.argwhere((ours != theirs) & ~tie)[:5])
    assert np.mean(ours == theirs) > 0.999, name
