"""The generic torchvision converter on a small conv-BN-linear network of both libraries."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv


class Small(nn.Module):
  """features.0 conv, features.1 batch norm, classifier linear: torchvision-style names."""

  num_classes: int = 5

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(8, (3, 3), padding=1, name="features.0")(x)
    x = nn.BatchNorm(use_running_average=not train, epsilon=1e-5, momentum=0.9, name="features.1")(
      x
    )
    x = nn.relu(x).mean((1, 2))
    return nn.Dense(self.num_classes, name="classifier")(x), {}


def _torch_small(torch, num_classes=5):
  net = torch.nn.Module()
  net.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
  net.classifier = torch.nn.Linear(8, num_classes)
  with torch.no_grad():  # non-trivial running statistics
    net.features[1].running_mean.uniform_(-1, 1)
    net.features[1].running_var.uniform_(0.5, 2)
    net.features[1].weight.uniform_(0.5, 1.5)
    net.features[1].bias.uniform_(-1, 1)
  return net.eval()


def _torch_forward(torch, net, x):
  y = net.features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  return net.classifier(torch.relu(y).mean((2, 3))).detach().numpy()


def test_converted_logits_equal_torch():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = _torch_small(torch)
  variables = tv.convert(net.state_dict(), Small(), input_shape=(1, 6, 6, 3))
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
  ours, _ = Small().apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(ours), _torch_forward(torch, net, x), rtol=1e-5, atol=1e-5)


def test_numpy_state_dict_and_pth_path_give_the_same_variables(tmp_path):
  torch = pytest.importorskip("torch")
  net = _torch_small(torch)
  path = tmp_path / "small.pth"
  torch.save(net.state_dict(), path)
  from_path = tv.convert(path, Small(), input_shape=(1, 6, 6, 3))
  arrays = {k: v.numpy() for k, v in net.state_dict().items()}
  from_arrays = tv.convert(arrays, Small(), input_shape=(1, 6, 6, 3))
  np.testing.assert_array_equal(
    from_path["params"]["features.0"]["kernel"], from_arrays["params"]["features.0"]["kernel"]
  )
  assert from_path["batch_stats"]["features.1"]["var"].shape == (8,)


def _arrays(num_classes=5):
  rng = np.random.default_rng(0)
  return {
    "features.0.weight": rng.normal(size=(8, 3, 3, 3)),
    "features.0.bias": rng.normal(size=8),
    "features.1.weight": np.ones(8),
    "features.1.bias": np.zeros(8),
    "features.1.running_mean": np.zeros(8),
    "features.1.running_var": np.ones(8),
    "features.1.num_batches_tracked": np.array(3),
    "classifier.weight": rng.normal(size=(num_classes, 8)),
    "classifier.bias": np.zeros(num_classes),
  }


def test_conv_kernel_is_transposed_to_hwio():
  weights = _arrays()
  variables = tv.convert(weights, Small(), input_shape=(1, 6, 6, 3))
  np.testing.assert_allclose(
    variables["params"]["features.0"]["kernel"][1, 2, 0, 5],
    weights["features.0.weight"][5, 0, 1, 2],
  )
  np.testing.assert_allclose(
    variables["params"]["classifier"]["kernel"][3, 4], weights["classifier.weight"][4, 3]
  )


def test_missing_extra_and_misshaped_keys_are_all_listed():
  weights = _arrays()
  del weights["features.1.running_var"]
  weights["head.weight"] = np.zeros(3)
  weights["features.0.bias"] = np.zeros(9)
  with pytest.raises(ValueError) as e:
    tv.convert(weights, Small(), input_shape=(1, 6, 6, 3))
  message = str(e.value)
  assert "missing keys ['features.1.running_var']" in message
  assert "unexpected keys ['head.weight']" in message
  assert "features.0.bias: model needs (8,), weights have (9,)" in message


def test_num_classes_that_do_not_match_the_weights_are_named():
  with pytest.raises(
    ValueError,
    match=r"classifier.weight: model needs \(8, 5\), weights have "
    r"\(8, 1000\).*num_classes",
  ):
    tv.convert(_arrays(num_classes=1000), Small(), input_shape=(1, 6, 6, 3))


def test_missing_pth_file():
  with pytest.raises(FileNotFoundError, match="no file at"):
    tv.convert("/nonexistent/weights.pth", Small(), input_shape=(1, 6, 6, 3))


class SmallFrozen(nn.Module):
  """Small with a FrozenBatchNorm: its affine is in batch_stats, where convert finds it."""

  @nn.compact
  def __call__(self, x, *, train=False):
    from research.models.norms import FrozenBatchNorm  # pylint: disable=import-outside-toplevel

    x = FrozenBatchNorm(name="features.1")(nn.Conv(8, (3, 3), padding=1, name="features.0")(x))
    return nn.Dense(5, name="classifier")(nn.relu(x).mean((1, 2))), {}


def test_frozen_batch_norm_affine_comes_from_weight_and_bias():
  weights = _arrays()
  weights["features.1.weight"] = np.arange(8.0)
  weights["features.1.bias"] = -np.arange(8.0)
  variables = tv.convert(weights, SmallFrozen(), input_shape=(1, 6, 6, 3))
  assert set(variables["params"]) == {"features.0", "classifier"}
  stats = variables["batch_stats"]["features.1"]
  np.testing.assert_array_equal(stats["scale"], np.arange(8.0))
  np.testing.assert_array_equal(stats["bias"], -np.arange(8.0))
  assert tv.torchvision_key("batch_stats", ("layer1.0", "bn1", "scale")) == "layer1.0.bn1.weight"


def test_inputs_of_any_structure_keep_their_dict_order():
  class Ordered(nn.Module):
    @nn.compact
    def __call__(self, maps, *, train=False):
      first = list(maps)[0]  # "z": jax.tree.map would have sorted "a" first
      return nn.Dense(2, name=f"head_{first}")(maps[first])

  inputs = {"z": jnp.zeros((1, 3)), "a": jnp.zeros((1, 4))}
  weights = {"head_z.weight": np.zeros((2, 3)), "head_z.bias": np.zeros(2)}
  variables = tv.convert(weights, Ordered(), inputs=inputs)
  assert variables["params"]["head_z"]["kernel"].shape == (3, 2)
