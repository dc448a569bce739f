"""DenseNet: torchvision's parameter counts and logits, the CIFAR DenseNet-BC-100, input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert.torchvision import convert
from research.models import densenet
from research.train.state import param_count
from research.train.tasks.classification import classification_loss
from tests.conftest import randomize_batch_norms


def _params(model, size):
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.float32))
  )
  return param_count(shapes["params"])


@pytest.mark.parametrize(
  "variant, count",
  [("121", 7_978_856), ("161", 28_681_000), ("169", 14_149_480), ("201", 20_013_928)],
)
def test_parameter_counts_equal_torchvision(variant, count):
  assert _params(getattr(densenet, f"DenseNet{variant}")(), 29) == count
  torchvision = pytest.importorskip("torchvision")
  tv_model = getattr(torchvision.models, f"densenet{variant}")(weights=None)
  assert sum(p.numel() for p in tv_model.parameters()) == count


def test_densenet_bc100_parameter_count_is_the_per_layer_arithmetic():
  k, layers = 12, 16

  def block(c0):  # per layer: norm1 2c, conv1 c*4k, norm2 2*4k, conv2 9*4k*k
    return sum(2 * c + c * 4 * k + 2 * 4 * k + 9 * 4 * k * k for c in range(c0, c0 + layers * k, k))

  def transition(c):  # norm 2c, conv c * c//2
    return 2 * c + c * (c // 2)

  body = 3 * 3 * 3 * 24 + block(24) + transition(216) + block(108) + transition(300) + block(150)
  body += 2 * 342  # norm5
  assert body + 342 * 10 + 10 == 769_162
  assert _params(densenet.DenseNetBC100(), 32) == 769_162
  assert _params(densenet.DenseNetBC100(num_classes=100), 32) == 800_032  # the paper's 0.8M


def test_stages_are_named_with_their_shapes():
  model = densenet.DenseNetBC100()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  logits, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3))), variables)
  assert {k: v.shape for k, v in out.items()} == {
    "stem": (2, 32, 32, 24),
    "denseblock1": (2, 32, 32, 216),
    "transition1": (2, 16, 16, 108),
    "denseblock2": (2, 16, 16, 300),
    "transition2": (2, 8, 8, 150),
    "denseblock3": (2, 8, 8, 342),
    "features": (2, 8, 8, 342),
    "pre_logits": (2, 342),
    "logits": (2, 10),
  }
  assert logits.shape == (2, 10)
  model = densenet.DenseNet121()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  _, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3))), variables)
  assert out["stem"].shape == (1, 56, 56, 64)
  assert out["denseblock1"].shape == (1, 56, 56, 256)
  assert out["transition3"].shape == (1, 7, 7, 512)
  assert out["features"].shape == (1, 7, 7, 1024)


@pytest.mark.parametrize(
  "variant, size, fragment",
  [
    (densenet.DenseNet121, (1, 28, 29, 3), "at least 29x29"),
    (densenet.DenseNetBC100, (1, 3, 32, 3), "at least 4x4"),
    (densenet.DenseNet121, (1, 224, 224, 1), "3 channel(s), shape [N, H, W, 3]"),
    (densenet.DenseNet121, (224, 224, 3), "shape [N, H, W, 3]"),
  ],
)
def test_wrong_images_name_expected_and_received_shape(variant, size, fragment):
  model = variant()
  with pytest.raises(ValueError) as e:
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(size)))
  assert fragment in str(e.value)
  assert str(size) in str(e.value)


def _randomize_batch_norms(torch, net):
  return randomize_batch_norms(torch, net).eval()


def _assert_logits_equal(torch, model, variables, net, shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  ours, _ = jax.jit(model.apply)(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = np.asarray(ours)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  return np.abs(ours - theirs).max() / np.abs(theirs).max()


@pytest.fixture(scope="module")
def densenet121_pair():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = _randomize_batch_norms(torch, torchvision.models.densenet121(weights=None))
  model = densenet.DenseNet121()
  return torch, net, model, convert(net.state_dict(), model)


@pytest.mark.parametrize("shape", [(1, 224, 224, 3), (1, 97, 129, 3)])
def test_densenet121_logits_equal_torchvision(densenet121_pair, shape):
  torch, net, model, variables = densenet121_pair
  _assert_logits_equal(torch, model, variables, net, shape)


def test_minimum_size_is_where_torchvision_stops(densenet121_pair):
  """29x29 runs (the parameter count test traces DenseNet121 at 29x29); 28 fails in torch too."""
  torch, net, _, _ = densenet121_pair
  with torch.no_grad():
    assert net(torch.zeros(1, 3, 29, 29)).shape == (1, 1000)
    with pytest.raises(RuntimeError, match="too small"):
      net(torch.zeros(1, 3, 28, 29))
  assert _params(densenet.DenseNetBC100(), 4) == 769_162  # two transitions: 4 -> 2 -> 1


def test_convert_names_the_classifier_when_num_classes_differ(densenet121_pair):
  _, net, _, _ = densenet121_pair
  with pytest.raises(ValueError, match=r"classifier.weight: model needs \(1024, 10\).*num_classes"):
    convert(net.state_dict(), densenet.DenseNet121(num_classes=10))


def test_cifar_stem_equals_torchvision_densenet_with_a_3x3_stem():
  """The general class with the CIFAR stem, small: torchvision's DenseNet with conv0
  replaced by a 3x3/1 conv and norm0, relu0, pool0 removed is the same network."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = torchvision.models.DenseNet(
    growth_rate=6, block_config=(2, 3, 2), num_init_features=12, num_classes=7
  )
  net.features.conv0 = torch.nn.Conv2d(3, 12, 3, padding=1, bias=False)
  for name in ("norm0", "relu0", "pool0"):
    delattr(net.features, name)
  _randomize_batch_norms(torch, net)
  model = densenet.DenseNet(
    growth_rate=6, block_config=(2, 3, 2), num_init_features=12, stem="cifar", num_classes=7
  )
  variables = convert(net.state_dict(), model, input_shape=(1, 13, 11, 3))
  _assert_logits_equal(torch, model, variables, net, (2, 13, 11, 3))


def test_jit_training_step_has_finite_gradients_and_updates_batch_stats():
  model = densenet.DenseNet(
    growth_rate=4,
    block_config=(2, 2),
    num_init_features=8,
    stem="cifar",
    num_classes=3,
    drop_rate=0.2,
  )
  # rbg keys: XLA's RngBitGenerator compiles in a fraction of threefry's time on CPU.
  key = functools.partial(jax.random.key, impl="rbg")
  x = jnp.linspace(-2.0, 2.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  variables = jax.jit(model.init)(key(0), x)
  labels = jnp.array([0, 2])

  @jax.jit
  def step(params, batch_stats):
    def loss_fn(p):
      outputs, updates = model.apply(
        {"params": p, "batch_stats": batch_stats},
        x,
        train=True,
        rngs={"dropout": key(2)},
        mutable=["batch_stats"],
      )
      return classification_loss(outputs, {"label": labels})["loss"], updates

    return jax.grad(loss_fn, has_aux=True)(params)

  grads, updates = step(variables["params"], variables["batch_stats"])
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["features.conv0"]["kernel"]).sum()) > 0
  old = variables["batch_stats"]["features.denseblock1"]["denselayer1"]["norm1"]["mean"]
  new = updates["batch_stats"]["features.denseblock1"]["denselayer1"]["norm1"]["mean"]
  assert not np.allclose(old, new)
