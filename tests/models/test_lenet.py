"""LeNet-5: the notes' parameter count, named stages, input checks, parity with PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.lenet import LeNet5
from research.train.state import param_count


def _init(num_classes=10):
  model = LeNet5(num_classes=num_classes)
  return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))


def test_parameter_count_is_the_notes():
  _, variables = _init()
  assert param_count(variables["params"]) == 61_706
  _, variables = _init(num_classes=5)
  assert param_count(variables["params"]) == 61_706 - 5 * 85


def test_every_stage_is_named_with_its_shape():
  model, variables = _init()
  logits, out = model.apply(variables, jnp.ones((3, 32, 32, 1)))
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes == {
    "conv1": (3, 28, 28, 6),
    "tanh1": (3, 28, 28, 6),
    "pool1": (3, 14, 14, 6),
    "conv2": (3, 10, 10, 16),
    "tanh2": (3, 10, 10, 16),
    "pool2": (3, 5, 5, 16),
    "conv3": (3, 1, 1, 120),
    "tanh3": (3, 1, 1, 120),
    "fc1": (3, 84),
    "tanh4": (3, 84),
    "pre_logits": (3, 84),
    "logits": (3, 10),
  }
  assert logits.shape == (3, 10)
  np.testing.assert_array_equal(out["pool1"][0, 0, 0], out["tanh1"][0, :2, :2].mean((0, 1)))


@pytest.mark.parametrize(
  "shape, fragment",
  [
    ((32, 32, 1), "rank 3"),
    ((2, 32, 32, 3), "1 channel(s)"),
    ((2, 28, 28, 1), "32x32"),
  ],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  model, variables = _init()
  with pytest.raises(ValueError) as e:
    model.apply(variables, jnp.zeros(shape))
  assert fragment in str(e.value)
  assert str(shape) in str(e.value)
  assert "[N, 32, 32, 1]" in str(e.value)


def test_logits_equal_a_pytorch_lenet_with_the_same_weights():
  torch = pytest.importorskip("torch")
  nn = torch.nn
  model, variables = _init()
  p = jax.tree.map(np.asarray, variables["params"])
  net = nn.Sequential(
    nn.Conv2d(1, 6, 5),
    nn.Tanh(),
    nn.AvgPool2d(2),
    nn.Conv2d(6, 16, 5),
    nn.Tanh(),
    nn.AvgPool2d(2),
    nn.Conv2d(16, 120, 5),
    nn.Tanh(),
    nn.Flatten(),
    nn.Linear(120, 84),
    nn.Tanh(),
    nn.Linear(84, 10),
  )
  convs, denses = [net[0], net[3], net[6]], [net[9], net[11]]
  with torch.no_grad():
    for layer, name in zip(convs, ("conv1", "conv2", "conv3")):
      layer.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
      layer.bias.copy_(torch.from_numpy(p[name]["bias"]))
    for layer, name in zip(denses, ("fc1", "fc2")):
      layer.weight.copy_(torch.from_numpy(p[name]["kernel"].T.copy()))
      layer.bias.copy_(torch.from_numpy(p[name]["bias"]))
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32)
  ours, _ = model.apply(variables, jnp.asarray(x))
  theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5)
