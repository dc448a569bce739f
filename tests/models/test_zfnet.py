"""ZFNet: Fig. 3's map sizes, per-layer parameter arithmetic, LRN and parity with a torch twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.models.zfnet import MIN_SIZE, ZFNet, local_response_norm
from research.train.state import param_count

# (kernel, in, out) of conv1-conv5 and (in, out) of fc6-fc8, as Fig. 3 gives them.
CONVS = [(7, 3, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]
LINEARS = [(6 * 6 * 256, 4096), (4096, 4096), (4096, 1000)]


def _out_shapes(model, shape):
  """{name: shape} of `out`, traced without computing anything."""
  x = jnp.zeros(shape)
  _, out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
  return {k: v.shape for k, v in out.items()}


def _torch_zfnet(torch, num_classes=1000):
  """The same network from torch layers, named as torchvision's AlexNet."""
  nn = torch.nn
  net = nn.Module()
  net.features = nn.Sequential(
    *(nn.Conv2d(3, 96, 7, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)),
    nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
    *(nn.Conv2d(96, 256, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)),
    nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
    *(nn.Conv2d(256, 384, 3, padding=1), nn.ReLU()),
    *(nn.Conv2d(384, 384, 3, padding=1), nn.ReLU()),
    *(nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2)),
  )
  net.avgpool = nn.AdaptiveAvgPool2d(6)
  net.classifier = nn.Sequential(
    *(nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU()),
    *(nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU()),
    nn.Linear(4096, num_classes),
  )
  net.forward = lambda x: net.classifier(torch.flatten(net.avgpool(net.features(x)), 1))
  return net


def test_parameter_count_is_the_per_layer_arithmetic():
  expected = sum(k * k * i * o + o for k, i, o in CONVS) + sum(i * o + o for i, o in LINEARS)
  assert expected == 62_357_608
  variables = tv.abstract_variables(ZFNet(), (1, 224, 224, 3))
  assert param_count(variables["params"]) == expected
  small = tv.abstract_variables(ZFNet(num_classes=10), (1, 224, 224, 3))
  assert param_count(small["params"]) == expected - 990 * (4096 + 1)
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    assert sum(p.numel() for p in _torch_zfnet(torch).parameters()) == expected


def test_map_sizes_at_224_are_fig_3s():
  shapes = _out_shapes(ZFNet(), (1, 224, 224, 3))
  assert shapes["conv1"] == shapes["relu1"] == (1, 110, 110, 96)
  assert shapes["pool1"] == shapes["norm1"] == (1, 55, 55, 96)
  assert shapes["conv2"] == shapes["relu2"] == (1, 26, 26, 256)
  assert shapes["pool2"] == shapes["norm2"] == (1, 13, 13, 256)
  assert shapes["conv3"] == shapes["conv4"] == (1, 13, 13, 384)
  assert shapes["conv5"] == shapes["relu5"] == (1, 13, 13, 256)
  assert shapes["pool5"] == shapes["avgpool"] == (1, 6, 6, 256)
  assert shapes["fc6"] == shapes["fc7"] == shapes["pre_logits"] == (1, 4096)
  assert shapes["logits"] == (1, 1000)
  assert set(shapes) == {
    *(f"{layer}{i}" for layer in ("conv", "relu") for i in range(1, 6)),
    *("pool1", "norm1", "pool2", "norm2", "pool5", "avgpool"),
    *("fc6", "relu6", "fc7", "relu7", "pre_logits", "logits"),
  }


def test_min_size_is_the_smallest_input_the_layers_accept():
  assert MIN_SIZE == 53
  assert _out_shapes(ZFNet(), (1, 53, 53, 3))["pool5"] == (1, 1, 1, 256)
  with pytest.raises(ValueError, match=r"at least 53x53; received shape \(1, 52, 60, 3\)"):
    _out_shapes(ZFNet(), (1, 52, 60, 3))
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    features = _torch_zfnet(torch).features
    assert features(torch.empty(1, 3, 53, 53)).shape == (1, 256, 1, 1)
    with pytest.raises(RuntimeError, match="too small"):
      features(torch.empty(1, 3, 52, 52))


@pytest.mark.parametrize(
  "shape, fragment",
  [((224, 224, 3), "rank 3"), ((1, 224, 224, 4), "3 channel(s)"), ((1, 224, 40, 3), "53x53")],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  with pytest.raises(ValueError) as e:
    _out_shapes(ZFNet(), shape)
  assert fragment in str(e.value)
  assert str(shape) in str(e.value)


@pytest.mark.parametrize(
  "size, alpha, beta, k", [(5, 1e-4, 0.75, 2.0), (5, 1e-2, 0.75, 1.0), (4, 0.5, 0.5, 1.5)]
)
def test_local_response_norm_is_torchs(size, alpha, beta, k):
  torch = pytest.importorskip("torch")
  # Large values so that the sum of squares, not k, dominates the divisor.
  x = 30 * np.random.default_rng(0).normal(size=(2, 3, 4, 7)).astype(np.float32)
  ours = local_response_norm(jnp.asarray(x), size=size, alpha=alpha, beta=beta, k=k)
  lrn = torch.nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
  theirs = lrn(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours, x / k**beta, rtol=1e-2)  # the normalization did something


@pytest.fixture(scope="module")
def torch_zfnet():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = _torch_zfnet(torch).eval()
  return torch, net, tv.convert(net.state_dict(), ZFNet())


@pytest.mark.parametrize("size", [(224, 224), (193, 161)])
def test_converted_logits_equal_the_torch_twin(torch_zfnet, size):
  torch, net, variables = torch_zfnet
  # Scaled up so that the contrast normalization is far from a constant factor.
  x = 50 * np.random.default_rng(0).normal(size=(1, *size, 3)).astype(np.float32)
  ours, out = ZFNet().apply(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  pool1, norm1 = np.asarray(out["pool1"]), np.asarray(out["norm1"])
  assert np.abs(norm1 - pool1 / 2**0.75).max() > 0.01 * np.abs(norm1).max()


def test_convert_names_the_classifier_when_num_classes_differ(torch_zfnet):
  _, net, _ = torch_zfnet
  with pytest.raises(ValueError, match=r"classifier\.6\.weight: model needs \(4096, 10\)"):
    tv.convert(net.state_dict(), ZFNet(num_classes=10))


def test_training_step_has_finite_gradients_and_dropout():
  model = ZFNet(num_classes=3, hidden=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, MIN_SIZE, MIN_SIZE, 3))
  rng = np.random.default_rng(0)
  params = jax.tree.map(  # He-scaled, from the traced shapes: skips compiling model.init
    lambda s: rng.normal(size=s.shape, scale=np.sqrt(2 / np.prod(s.shape[:-1]))).astype("f4"),
    tv.abstract_variables(model, x.shape)["params"],
  )

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
  assert not np.allclose(logits, other)  # dropout is on in training
