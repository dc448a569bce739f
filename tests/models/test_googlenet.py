"""GoogLeNet: torchvision's parameter counts, eval and train (auxiliary) logits, ceil-mode
pooling, input checks and the auxiliary loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.convert.torchvision import convert
from research.models import googlenet
from research.train.state import param_count
from tests.conftest import randomize_batch_norms


def _abstract(model, shape=(1, 224, 224, 3), train=False):
  """(variables, (logits, out)) as shapes: nothing is computed."""
  x = jnp.zeros(shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=train))
  outputs = jax.eval_shape(
    lambda v: model.apply(
      v, x, train=train, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
    )[0],
    variables,
  )
  return variables, outputs


@pytest.fixture(scope="module")
def default_abstract():
  """GoogLeNet()'s variables and eval outputs at 224x224, as shapes."""
  return _abstract(googlenet.GoogLeNet())


def test_parameter_counts_equal_torchvision(default_abstract):
  with_aux, _ = default_abstract
  without_aux, _ = _abstract(googlenet.GoogLeNet(aux_logits=False))
  assert param_count(with_aux["params"]) == 13_004_888
  assert param_count(without_aux["params"]) == 6_624_904
  torchvision = pytest.importorskip("torchvision")
  net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
  assert sum(p.numel() for p in net.parameters()) == 13_004_888
  assert net.transform_input is False  # torchvision's default without weights, and ours
  assert sum(p.numel() for n, p in net.named_parameters() if not n.startswith("aux")) == 6_624_904


def test_aux_heads_exist_after_eval_init_but_run_only_in_training(default_abstract):
  variables, (logits, out) = default_abstract
  assert {"aux1", "aux2"} <= set(variables["params"]) and "aux1" in variables["batch_stats"]
  assert "aux1" not in out and "aux2" not in out
  assert logits.shape == (1, 1000)
  _, (_, out) = _abstract(googlenet.GoogLeNet(num_classes=7), shape=(2, 224, 224, 3), train=True)
  assert out["aux1"].shape == out["aux2"].shape == out["logits"].shape == (2, 7)
  variables, (_, out) = _abstract(googlenet.GoogLeNet(aux_logits=False), train=True)
  assert "aux1" not in variables["params"] and "aux1" not in out


def test_stages_are_named_with_their_shapes(default_abstract):
  _, (_, out) = default_abstract
  assert {k: v.shape[1:] for k, v in out.items()} == {
    "conv1": (112, 112, 64),
    "maxpool1": (56, 56, 64),
    "conv2": (56, 56, 64),
    "conv3": (56, 56, 192),
    "maxpool2": (28, 28, 192),
    "stem": (28, 28, 192),
    "inception3a": (28, 28, 256),
    "inception3b": (28, 28, 480),
    "maxpool3": (14, 14, 480),
    "inception4a": (14, 14, 512),
    "inception4b": (14, 14, 512),
    "inception4c": (14, 14, 512),
    "inception4d": (14, 14, 528),
    "inception4e": (14, 14, 832),
    "maxpool4": (7, 7, 832),
    "inception5a": (7, 7, 832),
    "inception5b": (7, 7, 1024),
    "pre_logits": (1024,),
    "logits": (1000,),
  }


@pytest.mark.parametrize(
  "shape, fragment",
  [
    ((1, 14, 15, 3), "at least 15x15"),
    ((1, 224, 224, 4), "3 channel(s), shape [N, H, W, 3]"),
    ((224, 224, 3), "shape [N, H, W, 3]"),
  ],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  with pytest.raises(ValueError) as e:
    _abstract(googlenet.GoogLeNet(), shape=shape)
  assert fragment in str(e.value)
  assert str(shape) in str(e.value)


def test_ceil_mode_max_pool_equals_torch_for_every_size():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  for window, stride, padding in [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1), (5, 3, 2)]:
    for size in range(max(1, window - 2 * padding - stride + 1), 12):
      if googlenet.ceil_output_size(size, window, stride, padding) < 1:
        continue
      x = rng.normal(size=(1, size, size + 1, 2)).astype(np.float32)
      ours = googlenet.max_pool_ceil(jnp.asarray(x), window, stride, padding)
      theirs = torch.nn.functional.max_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), window, stride, padding, ceil_mode=True
      )
      np.testing.assert_array_equal(np.asarray(ours), theirs.numpy().transpose(0, 2, 3, 1))
  with pytest.raises(ValueError, match="gives no output"):
    googlenet.max_pool_ceil(jnp.zeros((1, 1, 1, 1)), 3, 2)


def _randomize_batch_norms(torch, net):
  return randomize_batch_norms(torch, net)


@pytest.fixture(scope="module")
def googlenet_pair():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
  net = _randomize_batch_norms(torch, net).eval()
  # Copies: torch's training-mode forward updates its running statistics in place.
  variables = convert({k: v.clone() for k, v in net.state_dict().items()}, googlenet.GoogLeNet())
  return torch, net, variables


def _close(ours, theirs):
  ours, theirs = np.asarray(ours), theirs.detach().numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize(
  "shape, transform_input", [((1, 224, 224, 3), False), ((1, 161, 193, 3), True)]
)
def test_eval_logits_equal_torchvision(googlenet_pair, shape, transform_input):
  """The odd size also runs torchvision's transform_input option on both sides."""
  torch, net, variables = googlenet_pair
  model = googlenet.GoogLeNet(transform_input=transform_input)
  net.transform_input = transform_input
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  try:
    with torch.no_grad():
      theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  finally:
    net.transform_input = False
  ours, _ = jax.jit(model.apply)(variables, jnp.asarray(x))
  _close(ours, theirs)


def test_train_logits_and_aux_logits_equal_torchvision(googlenet_pair):
  """Both in training mode (batch-statistics batch norm) with every dropout rate 0."""
  torch, net, variables = googlenet_pair
  model = googlenet.GoogLeNet(dropout=0.0, dropout_aux=0.0)
  x = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype(np.float32)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  (logits, out), updates = apply(variables, jnp.asarray(x))
  state = {k: v.clone() for k, v in net.state_dict().items()}
  dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
  rates = [m.p for m in dropouts]
  try:
    net.train()
    for m in dropouts:
      m.p = 0.0
    with torch.no_grad():
      theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))  # (logits, aux2, aux1)
    running_mean = net.conv1.bn.running_mean.numpy().copy()
  finally:  # the same network for the other tests
    net.load_state_dict(state)
    net.eval()
    for m, p in zip(dropouts, rates):
      m.p = p
  _close(logits, theirs.logits)
  _close(out["aux1"], theirs.aux_logits1)
  _close(out["aux2"], theirs.aux_logits2)
  # Flax momentum 0.9 is torch momentum 0.1.
  np.testing.assert_allclose(
    updates["batch_stats"]["conv1"]["bn"]["mean"], running_mean, rtol=1e-4, atol=1e-5
  )


def test_convert_names_the_classifiers_when_num_classes_differ(googlenet_pair):
  _, net, _ = googlenet_pair
  with pytest.raises(ValueError) as e:
    convert(net.state_dict(), googlenet.GoogLeNet(num_classes=10))
  assert "fc.weight: model needs (1024, 10), weights have (1024, 1000)" in str(e.value)
  assert "aux1.fc2.weight" in str(e.value) and "num_classes" in str(e.value)


def test_loss_adds_the_auxiliary_losses_weighted_0_3():
  rng = np.random.default_rng(0)
  logits, aux1, aux2 = (jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(3))
  batch = {"label": jnp.array([0, 1, 4, 2])}

  def ce(z):
    return optax.softmax_cross_entropy_with_integer_labels(z, batch["label"]).mean()

  metrics = googlenet.googlenet_loss((logits, {"aux1": aux1, "aux2": aux2}), batch)
  np.testing.assert_allclose(metrics["loss"], ce(logits) + 0.3 * (ce(aux1) + ce(aux2)), rtol=1e-6)
  np.testing.assert_allclose(metrics["aux1_loss"], ce(aux1), rtol=1e-6)
  np.testing.assert_allclose(metrics["aux2_loss"], ce(aux2), rtol=1e-6)
  expected_accuracy = np.mean(np.argmax(logits, -1) == np.asarray(batch["label"]))
  assert float(metrics["accuracy"]) == pytest.approx(expected_accuracy)
  eval_metrics = googlenet.googlenet_loss((logits, {}), batch)  # eval mode: no aux heads ran
  np.testing.assert_allclose(eval_metrics["loss"], ce(logits), rtol=1e-6)
  assert float(eval_metrics["aux1_loss"]) == 0.0


def _variables_from_numpy(model, shape):
  """Random variables without compiling `init`, which costs more than the step for 13M
  parameters: kernels normal(0, 0.05), BN scale and var 1, biases and means 0."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.normal(0, 0.05, leaf.shape), jnp.float32)
    return (jnp.ones if name in ("scale", "var") else jnp.zeros)(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_jit_training_step_has_finite_gradients_and_updates_batch_stats():
  model = googlenet.GoogLeNet(num_classes=3)
  x = jnp.linspace(-2.0, 2.0, 2 * 15 * 15 * 3).reshape(2, 15, 15, 3)
  batch = {"label": jnp.array([0, 2])}
  variables = _variables_from_numpy(model, x.shape)
  # rbg: XLA's RngBitGenerator compiles in a fraction of threefry's time on CPU.
  dropout_key = jax.random.key(1, impl="rbg")

  @jax.jit
  def step(params, batch_stats):
    def loss_fn(p):
      outputs, updates = model.apply(
        {"params": p, "batch_stats": batch_stats},
        x,
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"],
      )
      metrics = googlenet.googlenet_loss(outputs, batch)
      return metrics["loss"], (metrics, updates)

    return jax.grad(loss_fn, has_aux=True)(params)

  # XLA's optimizations cost more to compile (most of the test's time) than the one step
  # they would speed up; the gradients' values do not depend on them.
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    grads, (metrics, updates) = step(variables["params"], variables["batch_stats"])
  finally:
    jax.config.update("jax_disable_most_optimizations", False)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(metrics["aux1_loss"]) > 0 and float(metrics["aux2_loss"]) > 0
  assert float(jnp.abs(grads["aux1"]["fc2"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["conv1"]["conv"]["kernel"]).sum()) > 0
  old = variables["batch_stats"]["conv1"]["bn"]["mean"]
  assert not np.allclose(old, updates["batch_stats"]["conv1"]["bn"]["mean"])
