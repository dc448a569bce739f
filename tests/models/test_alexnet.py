"""AlexNet: torchvision's parameter count and layout, named layers, input checks, parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.models.alexnet import MIN_SIZE, AlexNet
from research.train.state import param_count


def _out_shapes(model, shape):
  """{name: shape} of `out`, traced without computing anything."""
  x = jnp.zeros(shape)
  _, out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
  return {k: v.shape for k, v in out.items()}


def test_parameter_count_equals_torchvision():
  variables = tv.abstract_variables(AlexNet(), (1, 224, 224, 3))
  assert param_count(variables["params"]) == 61_100_840
  assert set(variables) == {"params"}
  small = tv.abstract_variables(AlexNet(num_classes=10), (1, 224, 224, 3))
  assert param_count(small["params"]) == 61_100_840 - 990 * (4096 + 1)
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  with torch.device("meta"):  # shapes only: no 61M random numbers
    net = torchvision.models.alexnet()
  assert sum(p.numel() for p in net.parameters()) == 61_100_840


def test_every_layer_is_named_with_its_shape():
  assert _out_shapes(AlexNet(), (2, 224, 224, 3)) == {
    "conv1": (2, 55, 55, 64),
    "relu1": (2, 55, 55, 64),
    "pool1": (2, 27, 27, 64),
    "conv2": (2, 27, 27, 192),
    "relu2": (2, 27, 27, 192),
    "pool2": (2, 13, 13, 192),
    "conv3": (2, 13, 13, 384),
    "relu3": (2, 13, 13, 384),
    "conv4": (2, 13, 13, 256),
    "relu4": (2, 13, 13, 256),
    "conv5": (2, 13, 13, 256),
    "relu5": (2, 13, 13, 256),
    "pool5": (2, 6, 6, 256),
    "avgpool": (2, 6, 6, 256),
    "fc6": (2, 4096),
    "relu6": (2, 4096),
    "fc7": (2, 4096),
    "relu7": (2, 4096),
    "pre_logits": (2, 4096),
    "logits": (2, 1000),
  }


def test_min_size_is_the_smallest_input_torchvision_accepts():
  assert MIN_SIZE == 63
  assert _out_shapes(AlexNet(), (1, 63, 63, 3))["pool5"] == (1, 1, 1, 256)
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    features = torchvision.models.alexnet().features
    assert features(torch.empty(1, 3, 63, 63)).shape == (1, 256, 1, 1)
    with pytest.raises(RuntimeError, match="too small"):
      features(torch.empty(1, 3, 62, 62))


@pytest.mark.parametrize(
  "shape, fragment",
  [
    ((224, 224, 3), "rank 3"),
    ((1, 224, 224, 1), "3 channel(s)"),
    ((1, 62, 224, 3), "at least 63x63"),
  ],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  with pytest.raises(ValueError) as e:
    jax.eval_shape(lambda: AlexNet().init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  assert fragment in str(e.value)
  assert str(shape) in str(e.value)


@pytest.fixture(scope="module")
def torch_alexnet():
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = torchvision.models.alexnet(weights=None).eval()
  return torch, net, tv.convert(net.state_dict(), AlexNet())


@pytest.mark.parametrize("size", [(224, 224), (193, 161)])
def test_converted_logits_equal_torchvision(torch_alexnet, size):
  torch, net, variables = torch_alexnet
  x = np.random.default_rng(0).normal(size=(1, *size, 3)).astype(np.float32)
  ours, out = AlexNet().apply(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    pool5 = net.features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  np.testing.assert_allclose(
    out["pool5"], pool5.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4 * np.abs(pool5).max()
  )


def test_convert_names_the_classifier_when_num_classes_differ(torch_alexnet):
  _, net, _ = torch_alexnet
  with pytest.raises(ValueError, match=r"classifier\.6\.weight: model needs \(4096, 10\)"):
    tv.convert(net.state_dict(), AlexNet(num_classes=10))


def _random_params(model, shape):
  """He-scaled random parameters from the traced shapes: skips compiling `model.init`."""
  rng = np.random.default_rng(0)
  shapes = tv.abstract_variables(model, shape)["params"]
  return jax.tree.map(
    lambda s: rng.normal(size=s.shape, scale=np.sqrt(2 / np.prod(s.shape[:-1]))).astype(np.float32),
    shapes,
  )


def test_training_step_has_finite_gradients_and_dropout():
  model = AlexNet(num_classes=3, hidden=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, MIN_SIZE, MIN_SIZE, 3))
  params = _random_params(model, x.shape)

  @jax.jit
  def loss_and_grads(params, rng):
    def loss(params):
      logits, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
      return jnp.sum(logits**2), logits

    return jax.value_and_grad(loss, has_aux=True)(params)

  (loss, logits), grads = loss_and_grads(params, jax.random.PRNGKey(2))
  (_, other), _ = loss_and_grads(params, jax.random.PRNGKey(3))
  assert np.isfinite(loss) and loss > 0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert param_count(grads) == param_count(params)
  assert not np.allclose(logits, other)  # dropout is on in training
