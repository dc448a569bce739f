"""research.models.layers: the switch that puts every model convolution on oneDNN (CPU) or
lax, against lax.conv_general_dilated and nn.Conv, for every configuration the models use,
each classifier's logits and a training step, and under vmap and grad of grad."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.extend import core

from research.models import alexnet, densenet, googlenet, layers, lenet, resnet, vgg, zfnet
from research.ops import onednn
from research.train.state import init_variables

needs_onednn = pytest.mark.skipif(not onednn.available(), reason=onednn.status()[1])


def _close(a, b, rtol=1e-4):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(jnp.abs(b).max()))


def _conv(path, x, w, strides=(1, 1), padding="SAME", **kwargs):
  with layers.use_conv_path(path):
    return layers.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=layers.NHWC, **kwargs
    )


def test_path_selection():
  with layers.use_conv_path("lax"):
    assert layers.conv_path() == "lax"
  with layers.use_conv_path("auto"):
    assert layers.conv_path() == ("onednn" if onednn.available() else "lax")
  with pytest.raises(ValueError, match="path: expected one of"):
    layers.use_conv_path("cudnn")


@needs_onednn
def test_cpu_program_calls_onednn_and_gpu_tpu_programs_are_lax():
  x, w = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 16))

  def program(path, platform):
    def step(x, w):
      return jax.grad(lambda x, w: jnp.sum(_conv(path, x, w, (1, 1), "SAME") ** 2), (0, 1))(x, w)

    return jax.jit(step).trace(x, w).lower(lowering_platforms=(platform,)).as_text()

  cpu = program("auto", "cpu")
  assert cpu.count("custom_call @research_onednn") == 3  # forward, both gradients
  assert "stablehlo.convolution" not in cpu
  for platform in ("cuda", "tpu"):
    ours = program("auto", platform)
    assert "research_onednn" not in ours
    assert ours.count("stablehlo.convolution") == program("lax", platform).count(
      "stablehlo.convolution"
    )


def test_other_convolutions_go_to_lax_unchanged():
  """NCHW, 1-D and input-dilated convolutions keep lax's own program on either path; on the
  lax path so do groups and dilation."""
  x = jnp.ones((1, 12, 12, 4))
  nhwc = ("NHWC", "HWIO", "NHWC")
  both = [
    (x.transpose(0, 3, 1, 2), jnp.ones((4, 4, 3, 3)), dict(dimension_numbers=None)),
    (x[:, 0], jnp.ones((3, 4, 4)), dict(dimension_numbers=("NWC", "WIO", "NWC"))),
    (x, jnp.ones((3, 3, 4, 4)), dict(dimension_numbers=nhwc, lhs_dilation=(2, 2))),
  ]
  lax_only = [
    (x, jnp.ones((3, 3, 2, 4)), dict(dimension_numbers=nhwc, feature_group_count=2)),
    (x, jnp.ones((3, 3, 4, 4)), dict(dimension_numbers=nhwc, rhs_dilation=(2, 2))),
  ]
  for path, cases in (("auto", both), ("lax", both + lax_only)):
    for lhs, rhs, kwargs in cases:
      strides = (1,) * (lhs.ndim - 2)

      pads = [(1, 1)] * (lhs.ndim - 2)

      def program(conv, lhs=lhs, rhs=rhs, kwargs=kwargs, strides=strides, pads=pads, path=path):
        with layers.use_conv_path(path):
          return str(jax.make_jaxpr(lambda a, b: conv(a, b, strides, pads, **kwargs))(lhs, rhs))

      ours = program(layers.conv_general_dilated)
      assert "custom_vjp" not in ours and "ffi" not in ours
      assert ours == program(lax.conv_general_dilated)


@pytest.mark.parametrize("path", ["auto", "lax"])
def test_conv_layer_matches_nn_conv_and_its_gradients(path):
  """layers.Conv has nn.Conv's parameters and gives its outputs and parameter gradients,
  including 1x1 kernels (a matrix product on the lax path) and bfloat16 inputs."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  for kwargs in (
    dict(features=8, kernel_size=(5, 5), strides=2, padding=2),
    dict(features=8, kernel_size=(1, 1), strides=2, padding="VALID"),
    dict(features=6, kernel_size=(3, 3), padding=1, feature_group_count=3),
  ):
    ours, ref = layers.Conv(**kwargs), nn.Conv(**kwargs)
    variables = ref.init(jax.random.PRNGKey(0), x)
    with layers.use_conv_path(path):
      got = ours.init(jax.random.PRNGKey(0), x)
      assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, variables)

      def grads(model, variables=variables):
        return jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x) ** 2)))(variables)

      _close(ours.apply(variables, x), ref.apply(variables, x), 1e-5)
      for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref)), strict=True):
        _close(a, b)
      half = layers.Conv(**kwargs, dtype=jnp.bfloat16).apply(variables, x)
      assert half.dtype == jnp.bfloat16
      _close(half.astype(jnp.float32), ref.apply(variables, x), 5e-2)


# Tiny variants of each family that builds its convolutions with layers.Conv.
TINY = {
  "lenet": (functools.partial(lenet.LeNet5, in_channels=3), 32),
  "alexnet": (functools.partial(alexnet.AlexNet, hidden=32), 63),
  "zfnet": (functools.partial(zfnet.ZFNet, hidden=32, features=(8, 16, 16, 16, 8)), 53),
  "vgg": (functools.partial(vgg.VGG, cfg=(8, "M", 16, "M", 16), batch_norm=True, hidden=32), 32),
  "resnet18": (
    functools.partial(resnet.ResNet, (1, 1, 1, 1), resnet.BasicBlock, num_filters=8),
    32,
  ),
  "resnet50": (
    functools.partial(resnet.ResNet, (1, 1, 1, 1), resnet.Bottleneck, num_filters=8),
    32,
  ),
  "densenet": (
    functools.partial(
      densenet.DenseNet, growth_rate=4, block_config=(1, 2, 1, 1), num_init_features=8
    ),
    64,
  ),
  # Without the auxiliary heads: their gradients through batch norm over 4x4 pooled maps
  # stray in float32 on either path (the heads' convolutions are checked one by one in
  # test_every_model_convolution_matches_lax).
  # No dropout: the float64 reference draws other masks.
  "googlenet": (functools.partial(googlenet.GoogLeNet, aux_logits=False, dropout=0.0), 64),
}


def _walk(jaxpr, found):
  """conv_general_dilated equations of a program and all its sub-programs."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else [value]:
        if isinstance(sub, core.ClosedJaxpr | core.Jaxpr):
          _walk(getattr(sub, "jaxpr", sub), found)
  return found


@needs_onednn
def test_every_model_convolution_matches_lax():
  """Every configuration (input size, kernel, stride, padding, dilation, groups, channels)
  of the full-size classifiers at 64x64 (LeNet-5 32, AlexNet 63, ZFNet 53), forward and both
  gradients, oneDNN against lax."""
  models = [
    (functools.partial(lenet.LeNet5, in_channels=3), 32),
    (alexnet.AlexNet, 63),
    (zfnet.ZFNet, 53),
    (vgg.VGG16, 64),
    (resnet.ResNet18, 64),
    (resnet.ResNet50, 64),
    (densenet.DenseNet121, 64),
    (googlenet.GoogLeNet, 64),
  ]
  configs = {}
  for model, size in models:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    m = model(num_classes=10)
    # On the oneDNN path the program holds lax's branch too (lax.platform_dependent), with
    # every convolution, 1x1 ones included (matrix products on the lax path).
    with layers.use_conv_path("auto"):
      closed = jax.make_jaxpr(
        lambda x, m=m: m.init_with_output(
          {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=True
        )
      )(x)
    for eqn in _walk(closed.jaxpr, []):
      p = eqn.params
      if tuple(p["dimension_numbers"].lhs_spec) != (0, 3, 1, 2) or eqn.invars[0].aval.ndim != 4:
        continue
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      if rhs[2] * p["feature_group_count"] != lhs[3] or p["window_strides"] == ():
        continue  # a transposed program (a gradient), not a layer
      key = (lhs[1:], rhs, p["window_strides"], p["padding"], p["rhs_dilation"])
      configs[key] = p["feature_group_count"]
  assert len(configs) > 100
  rng = np.random.default_rng(0)
  refused, cases = [], []
  for (hwc, rhs, strides, padding, dilation), groups in sorted(configs.items()):
    geometry = onednn.plan((2, *hwc), rhs, strides, padding, dilation, groups)
    if isinstance(geometry, str):
      refused.append(geometry)
      continue
    x = jnp.asarray(rng.normal(size=(2, *hwc)), jnp.float32)
    w = jnp.asarray(rng.normal(size=rhs) / np.sqrt(np.prod(rhs[:3])), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(2, *geometry.out_hw, rhs[3])), jnp.float32)
    cases.append(((x, w, dy), (strides, padding, dilation, groups)))

  def run(path):
    """Every case's forward value and the vjp of a random cotangent, in one program."""

    def all_cases(arrays):
      outs = []
      for (x, w, dy), (strides, padding, dilation, groups) in zip(arrays, statics, strict=True):
        conv = functools.partial(
          _conv,
          path,
          strides=strides,
          padding=padding,
          rhs_dilation=dilation,
          feature_group_count=groups,
        )
        y, vjp = jax.vjp(conv, x, w)
        outs.append((y, *vjp(dy)))
      return outs

    return jax.jit(all_cases)([c[0] for c in cases])

  statics = [c[1] for c in cases]
  for ours, ref in zip(run("auto"), run("lax"), strict=True):
    for a, b in zip(ours, ref, strict=True):
      _close(a, b)
  assert not refused, refused


def _train_step(model, variables, x, labels, path, grads=True):
  """(logits, gradients or None) of one training step's loss, traced on `path`."""
  has_bn = "batch_stats" in variables

  def loss_fn(params):
    (logits, out), _ = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      rngs={"dropout": jax.random.PRNGKey(1)},
      mutable=["batch_stats"] if has_bn else [],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    for name in ("aux1", "aux2"):
      if name in out:
        loss += 0.3 * optax.softmax_cross_entropy_with_integer_labels(out[name], labels).mean()
    return loss

  with layers.use_conv_path(path):
    logits = jax.jit(lambda v: model.apply(v, x, train=False)[0])(variables)
    return logits, jax.jit(jax.grad(loss_fn))(variables["params"]) if grads else None


@needs_onednn
@pytest.mark.parametrize("family", sorted(TINY))
def test_classifier_logits_and_training_step_match_lax(family):
  """Logits against the lax path; the training step's gradients against the lax path, and
  where float32 lax itself strays (GoogLeNet: 2e-2 of the largest gradient), against lax
  in float64, to lax's own float32 accuracy (below)."""
  build, size = TINY[family]
  model = build(num_classes=5)
  rng = np.random.default_rng(3)
  # Four images and last maps of 2x2 at least: batch norm over fewer values (1x1 maps of
  # two images) amplifies float32 rounding in the gradients to 1e-2.
  x = jnp.asarray(rng.normal(size=(4, size, size, 3)), jnp.float32)
  labels = jnp.asarray([1, 3, 0, 4])
  # Jitted: eagerly each initializer compiles on its own. GoogLeNet keeps model.init's
  # values (a rounding-level change of them, plain jit's, makes float32 gradients stray by
  # 2e-1 of some leaves on either path, as lax's do here anyway), which init_variables
  # gives in one program.
  if family == "googlenet":
    variables = init_variables(model, jax.random.PRNGKey(0), x.shape)
  else:
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  logits, grads = _train_step(model, variables, x, labels, "auto")
  # GoogLeNet's float32 lax gradients are not the reference (below): only its logits.
  ref_logits, ref_grads = _train_step(
    model, variables, x, labels, "lax", grads=family != "googlenet"
  )
  _close(logits, ref_logits)
  if family == "googlenet":
    with jax.enable_x64(True):
      f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
      model64 = build(num_classes=5, dtype=jnp.float64)
      _, ref_grads = _train_step(model64, jax.tree.map(f64, variables), f64(x), labels, "lax")
  # Relative to the largest gradient: some leaves' gradients are zero but for rounding (a
  # convolution's bias before batch norm), where a leaf's own scale means nothing.
  # In numpy: GoogLeNet's float64 reference, outside enable_x64, would be cast to float32.
  scale = max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(ref_grads))
  # GoogLeNet's float32 gradients stray from float64 (its max pools' near-ties): through
  # lax by 2e-2 of the largest, through oneDNN by 5e-5 on an Intel Xeon (AVX-512) and by
  # 2.7e-4 to 2.9e-3 on an AMD EPYC (AVX2). oneDNN is held to lax's own float32 accuracy.
  tol = 2e-2 if family == "googlenet" else 1e-4
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale)


@needs_onednn
def test_vmap_saliency_and_input_gradient_penalty_on_a_model_match_lax():
  """Per-image input gradients under vmap (saliency), and the gradient of an input-gradient
  penalty (grad of grad, research.train.steps) through a ResNet."""
  model, size = TINY["resnet18"]
  model = model(num_classes=5)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(3, size, size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # eager: a compilation per initializer

  def run(path):
    def score(v, image):
      return model.apply(v, image[None])[0][0, 2]

    def penalty(params):
      v = {**variables, "params": params}
      d = jax.grad(lambda x: jnp.sum(model.apply(v, x)[0][:, 1]))(x)
      return jnp.sum(d**2)

    with layers.use_conv_path(path):
      saliency = jax.jit(jax.vmap(jax.grad(score, 1), (None, 0)))(variables, x)
      return saliency, jax.jit(jax.grad(penalty))(variables["params"])

  (saliency, grads), (ref_saliency, ref_grads) = run("auto"), run("lax")
  _close(saliency, ref_saliency)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    _close(a, b, 2e-4)
