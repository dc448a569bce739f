"""Every family as a backbone: headless (num_classes=0), feature strides, conv and norm
arguments, bfloat16 computation with float32 parameters."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models import alexnet, darknet, densenet, googlenet, lenet, resnet, vgg, zfnet
from research.models.norms import FrozenBatchNorm

# family -> (tiny model builder, input shape, the classifier's parameter names)
FAMILIES = {
  "lenet": (lenet.LeNet5, (2, 32, 32, 1), {"fc1", "fc2"}),
  "alexnet": (
    functools.partial(alexnet.AlexNet, hidden=16),
    (2, 63, 63, 3),
    {"classifier.1", "classifier.4", "classifier.6"},
  ),
  "zfnet": (
    functools.partial(zfnet.ZFNet, hidden=16, features=(8, 8, 8, 8, 8)),
    (2, 53, 53, 3),
    {"classifier.1", "classifier.4", "classifier.6"},
  ),
  "vgg": (
    functools.partial(vgg.VGG, cfg=(8, "M", 8, "M", 16, 16, "M"), batch_norm=True, hidden=16),
    (2, 16, 16, 3),
    {"classifier.0", "classifier.3", "classifier.6"},
  ),
  "googlenet": (googlenet.GoogLeNet, (1, 15, 15, 3), {"fc", "aux1", "aux2"}),
  "resnet": (
    functools.partial(
      resnet.ResNet, stage_sizes=(1, 1, 1, 1), block_cls=resnet.Bottleneck, num_filters=4
    ),
    (2, 16, 16, 3),
    {"fc"},
  ),
  "wide_resnet": (
    functools.partial(resnet.WideResNet, depth=10, widen_factor=1),
    (2, 8, 8, 3),
    {"fc"},
  ),
  "densenet": (
    functools.partial(
      densenet.DenseNet, growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8
    ),
    (2, 32, 32, 3),
    {"classifier"},
  ),
  "darknet": (
    functools.partial(darknet.Darknet, cfg=((4, 3, 2), "M", (8, 3), (4, 1), (8, 3))),
    (2, 16, 16, 3),
    {"fc"},
  ),
}
# Full-size variants whose strides are measured, and sizes 64 apart (a multiple of 32).
STRIDE_MODELS = {
  "alexnet": (alexnet.AlexNet, 63),
  "zfnet": (zfnet.ZFNet, 53),
  "zfnet_bn": (functools.partial(zfnet.ZFNet, batch_norm=True), 53),
  "vgg16": (vgg.VGG16, 32),
  "vgg11_bn": (vgg.VGG11_BN, 32),
  "googlenet": (googlenet.GoogLeNet, 15),
  # Tracing a whole ResNet-50 or DenseNet-121 costs seconds: the strides depend only on
  # the stem and the number of stages, which these small configurations share with them.
  "resnet": (FAMILIES["resnet"][0], 33),
  "wrn": (resnet.WRN28_10, 8),
  "densenet": (FAMILIES["densenet"][0], 29),
  "densenet_cifar": (
    functools.partial(densenet.DenseNet, growth_rate=4, block_config=(1, 1, 1), stem="cifar"),
    8,
  ),
}


def _abstract(model, shape, dtype=jnp.float32):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape, dtype)))


def _random_variables(abstract, seed=0):
  """Variables of these shapes drawn by NumPy (cheaper than compiling `init`)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name in ("kernel",):
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _apply(model, variables, x, **kwargs):
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, x)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_headless_builds_no_classifier_and_returns_none_with_the_same_maps(family):
  build, shape, head = FAMILIES[family]
  full, headless = build(num_classes=5), build(num_classes=0)
  full_vars = _random_variables(_abstract(full, shape))
  headless_shapes = _abstract(headless, shape)
  assert set(full_vars["params"]) - set(headless_shapes["params"]) == head
  assert set(headless_shapes["params"]) <= set(full_vars["params"])
  variables = {c: {k: v for k, v in tree.items() if k not in head} for c, tree in full_vars.items()}
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  logits, out = _apply(headless, variables, x)
  full_logits, full_out = _apply(full, full_vars, x)
  assert logits is None and full_logits.shape == (shape[0], 5)
  assert "logits" not in out
  assert set(out) <= set(full_out)
  spatial = {k for k, v in full_out.items() if v.ndim == 4 and k != "avgpool"}
  assert spatial <= set(out)
  for k in out:
    np.testing.assert_allclose(out[k], full_out[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_num_classes_must_be_a_non_negative_int(family):
  build, shape, _ = FAMILIES[family]
  with pytest.raises(ValueError, match=r"num_classes must be an int >= 0.*received num_classes=-1"):
    _abstract(build(num_classes=-1), shape)


@pytest.mark.parametrize("name", list(STRIDE_MODELS))
def test_feature_strides_are_the_measured_strides_of_every_map(name):
  build, size = STRIDE_MODELS[name]
  model = build(num_classes=0)

  def spatial_shapes(s):
    shape = (1, s, s, 3)
    _, out = jax.eval_shape(
      lambda v, x: model.apply(v, x), _abstract(model, shape), jnp.zeros(shape)
    )
    return {k: v.shape[1] for k, v in out.items() if v.ndim == 4}

  small, large = spatial_shapes(size), spatial_shapes(size + 64)
  # Each layer maps n to floor or ceil((n + c) / s): 64 more pixels give 64 / stride more.
  measured = {k: 64 // (large[k] - small[k]) for k in small}
  assert model.feature_strides == measured


def test_lenet_feature_strides_name_every_map():
  model = lenet.LeNet5(num_classes=0)
  _, out = jax.eval_shape(
    lambda v, x: model.apply(v, x), _abstract(model, (1, 32, 32, 1)), jnp.zeros((1, 32, 32, 1))
  )
  assert set(model.feature_strides) == set(out)
  # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5 -> conv 1: each pool halves.
  assert [model.feature_strides[k] for k in ("tanh1", "pool1", "tanh2", "pool2", "tanh3")] == [
    1,
    2,
    2,
    4,
    4,
  ]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bfloat16_computes_in_bfloat16_with_float32_params_and_statistics(family):
  build, shape, _ = FAMILIES[family]
  model, reference = build(num_classes=5, dtype=jnp.bfloat16), build(num_classes=5)
  abstract = _abstract(model, shape)
  assert {v.dtype for v in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  # Dtypes of a training step's outputs, traced only.
  (logits, out), updates = jax.eval_shape(
    functools.partial(model.apply, train=True, mutable=["batch_stats"]),
    abstract,
    x,
    rngs={"dropout": jax.random.key(2)},
  )
  assert logits.dtype == jnp.bfloat16
  # Every map (pools, concatenations, LRN included) stays in bfloat16.
  assert {k: v.dtype for k, v in out.items()} == {k: jnp.dtype(jnp.bfloat16) for k in out}
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))
  variables = _random_variables(abstract)
  # The same numbers as float32, to bfloat16's precision.
  logits, _ = _apply(model, variables, x)
  expected, _ = _apply(reference, variables, x)
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(np.float32(logits), expected, atol=0.05 * scale)
  assert not np.allclose(np.float32(logits), expected, rtol=0, atol=1e-6 * scale)


class _CountedConv(nn.Conv):
  """nn.Conv that records each call, to see that a model builds its convs from `conv`."""

  @nn.compact
  def __call__(self, x):
    self.sow("intermediates", "calls", 1)
    return super().__call__(x)


NORM_MODELS = {
  "resnet": (FAMILIES["resnet"][0], (2, 16, 16, 3), 17),  # stem + 4 x (3 + downsample)
  "wide_resnet": (FAMILIES["wide_resnet"][0], (2, 8, 8, 3), 9),  # stem + 3 x 2 + 2 shortcuts
  "vgg_bn": (FAMILIES["vgg"][0], (2, 16, 16, 3), 4),
  "densenet": (FAMILIES["densenet"][0], (2, 32, 32, 3), 1 + 4 * 2 * 2 + 3),
  "googlenet": (googlenet.GoogLeNet, (1, 15, 15, 3), 3 + 9 * 6),
}


@pytest.mark.parametrize("name", list(NORM_MODELS))
def test_conv_and_frozen_norm_arguments_build_every_layer(name):
  build, shape, convs = NORM_MODELS[name]
  model = build(num_classes=0, conv=_CountedConv, norm=FrozenBatchNorm)
  abstract = _abstract(model, shape)
  # No norm in params: every scale and bias of the norms is a frozen batch statistic.
  flat = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
  assert {path[-1].key for path, _ in flat} <= {"kernel", "bias"}
  assert all(set(s) == {"scale", "bias", "mean", "var"} for s in _norm_leaves(abstract))
  variables = _random_variables(abstract)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  (_, _), state = _apply(model, variables, x, train=True, mutable=["batch_stats", "intermediates"])
  assert sum(jax.tree.leaves(state["intermediates"])) == convs
  # Training leaves frozen statistics as they were.
  jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], variables["batch_stats"])


def _norm_leaves(variables):
  """The leaf-name sets of each module in batch_stats."""
  flat = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
  modules = {}
  for path, _ in flat:
    modules.setdefault(tuple(k.key for k in path[:-1]), set()).add(path[-1].key)
  return list(modules.values())


def test_vgg_norm_needs_batch_norm():
  with pytest.raises(ValueError, match="norm is used only with batch_norm=True"):
    _abstract(vgg.VGG11(norm=FrozenBatchNorm), (1, 32, 32, 3))


def test_families_are_the_classifier_modules_and_every_one_has_variants():
  assert models.families() == [
    "alexnet",
    "darknet",
    "densenet",
    "fcn",
    "googlenet",
    "lenet",
    "resnet",
    "vgg",
    "zfnet",
  ]
  import importlib

  for family in models.families():
    assert models.variants(importlib.import_module(f"research.models.{family}"))


@pytest.mark.parametrize(
  "name", ["layers.Conv", "norms.FrozenBatchNorm", "fpn.FeaturePyramidNetwork"]
)
def test_resolving_a_building_block_says_it_is_not_a_model(name):
  family = name.split(".")[0]
  with pytest.raises(ValueError, match=f"research.models.{family} holds building blocks"):
    models.resolve(name)
