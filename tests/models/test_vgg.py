"""VGG: torchvision's parameter counts and layout for all eight variants, names, parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from research.convert import torchvision as tv
from research.models import resolve, vgg
from research.train.state import param_count

COUNTS = {
  "VGG11": 132_863_336,
  "VGG13": 133_047_848,
  "VGG16": 138_357_544,
  "VGG19": 143_667_240,
  "VGG11_BN": 132_868_840,
  "VGG13_BN": 133_053_736,
  "VGG16_BN": 138_365_992,
  "VGG19_BN": 143_678_248,
}


def _out_shapes(model, shape):
  """{name: shape} of `out`, traced without computing anything."""
  x = jnp.zeros(shape)
  _, out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
  return {k: v.shape for k, v in out.items()}


@pytest.mark.parametrize("name", COUNTS)
def test_parameter_count_and_keys_equal_torchvision(name):
  model = resolve(f"vgg.{name}")()
  assert model.model_name == name
  variables = tv.abstract_variables(model, (1, 224, 224, 3))
  assert param_count(variables["params"]) == COUNTS[name]
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  with torch.device("meta"):  # shapes only: no 130M random numbers
    net = getattr(torchvision.models, name.lower())()
  assert sum(p.numel() for p in net.parameters()) == COUNTS[name]
  ours = {
    tv.torchvision_key(collection, path)
    for collection, tree in variables.items()
    for path in traverse_util.flatten_dict(tree)
  }
  assert ours == {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}


def test_vgg16_names_every_layer_as_the_paper():
  shapes = _out_shapes(vgg.VGG16(), (1, 224, 224, 3))
  convs = [(1, 2, 64, 224), (2, 2, 128, 112), (3, 3, 256, 56), (4, 3, 512, 28), (5, 3, 512, 14)]
  expected = {}
  for block, n, filters, size in convs:
    for i in range(1, n + 1):
      expected[f"conv{block}_{i}"] = expected[f"relu{block}_{i}"] = (1, size, size, filters)
    expected[f"pool{block}"] = (1, size // 2, size // 2, filters)
  expected.update(avgpool=(1, 7, 7, 512), fc6=(1, 4096), relu6=(1, 4096), fc7=(1, 4096))
  expected.update(relu7=(1, 4096), pre_logits=(1, 4096), logits=(1, 1000))
  assert shapes == expected
  bn = _out_shapes(vgg.VGG11_BN(), (1, 224, 224, 3))
  assert bn["bn1_1"] == bn["relu1_1"] == (1, 224, 224, 64)
  assert "conv1_2" not in bn and bn["conv5_2"] == (1, 14, 14, 512)


def test_min_size_is_the_smallest_input_torchvision_accepts():
  assert _out_shapes(vgg.VGG11(), (1, 32, 32, 3))["pool5"] == (1, 1, 1, 512)
  with pytest.raises(ValueError, match=r"VGG11: .*at least 32x32; received shape \(1, 31, 64, 3\)"):
    _out_shapes(vgg.VGG11(), (1, 31, 64, 3))
  assert _out_shapes(vgg.VGG(cfg=(8, "M", 8, "M")), (1, 4, 4, 3))["pool2"] == (1, 1, 1, 8)
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    features = torchvision.models.vgg11().features
    assert features(torch.empty(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    with pytest.raises(RuntimeError, match="too small"):
      features(torch.empty(1, 3, 31, 31))


@pytest.mark.parametrize(
  "shape, fragment",
  [((224, 224, 3), "rank 3"), ((1, 224, 224, 1), "3 channel(s)"), ((1, 16, 224, 3), "32x32")],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  with pytest.raises(ValueError) as e:
    _out_shapes(vgg.VGG16_BN(), shape)
  assert "VGG16_BN" in str(e.value)
  assert fragment in str(e.value)
  assert str(shape) in str(e.value)


def _torch_vgg(name):
  torchvision = pytest.importorskip("torchvision")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = getattr(torchvision.models, name.lower())(weights=None)
  with torch.no_grad():  # non-trivial batch norm: random statistics, scales and shifts
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
  net.eval()
  return torch, net, tv.convert(net.state_dict(), getattr(vgg, name)())


@pytest.fixture(scope="module")
def torch_vgg11():
  return _torch_vgg("VGG11")


@pytest.fixture(scope="module")
def torch_vgg11_bn():
  return _torch_vgg("VGG11_BN")


@pytest.mark.parametrize("fixture", ["torch_vgg11", "torch_vgg11_bn"])
@pytest.mark.parametrize("size", [(224, 224), (193, 161)])
def test_converted_logits_equal_torchvision(request, fixture, size):
  torch, net, variables = request.getfixturevalue(fixture)
  model = vgg.VGG11_BN() if fixture.endswith("bn") else vgg.VGG11()
  x = np.random.default_rng(0).normal(size=(1, *size, 3)).astype(np.float32)
  ours, out = model.apply(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  assert np.abs(theirs).max() > 0


def test_convert_names_the_classifier_when_num_classes_differ(torch_vgg11):
  _, net, _ = torch_vgg11
  with pytest.raises(ValueError, match=r"classifier\.6\.weight: model needs \(4096, 10\)"):
    tv.convert(net.state_dict(), vgg.VGG11(num_classes=10))


def test_training_step_updates_batch_stats_with_finite_gradients():
  model = vgg.VGG(cfg=(8, "M", 16, "M"), batch_norm=True, hidden=16, num_classes=3)
  assert model.model_name == "VGG5_BN"
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  # Random parameters and fresh statistics from the traced shapes: skips compiling model.init.
  rng = np.random.default_rng(0)
  shapes = tv.abstract_variables(model, x.shape)
  params = jax.tree.map(
    lambda s: rng.normal(size=s.shape, scale=np.sqrt(2 / np.prod(s.shape[:-1]))).astype("f4"),
    shapes["params"],
  )
  batch_stats = jax.tree.map(lambda s: np.zeros(s.shape, "f4"), shapes["batch_stats"])
  for stats in batch_stats.values():
    stats["var"] += 1
  assert batch_stats["features.1"]["mean"].shape == (8,)

  @jax.jit
  def loss_and_grads(params, batch_stats, rng):
    def loss(params):
      (logits, out), updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        x,
        train=True,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
      )
      return jnp.sum(logits**2), (out, updates)

    return jax.value_and_grad(loss, has_aux=True)(params)

  (loss, (out, updates)), grads = loss_and_grads(params, batch_stats, jax.random.PRNGKey(2))
  assert np.isfinite(loss) and loss > 0
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # torch's momentum 0.1: the running mean moves a tenth of the way from 0 to the batch mean.
  np.testing.assert_allclose(
    updates["batch_stats"]["features.1"]["mean"],
    0.1 * out["conv1_1"].mean((0, 1, 2)),
    rtol=1e-5,
    atol=1e-7,
  )
  # Training mode normalizes with the batch's own statistics: the mean becomes the shift.
  bias = params["features.1"]["bias"]
  np.testing.assert_allclose(out["bn1_1"].mean((0, 1, 2)), bias, rtol=1e-4, atol=1e-4)
