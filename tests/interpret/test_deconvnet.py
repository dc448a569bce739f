"""The deconvnet against its definition (unpool by switches, rectify, transposed filters) and
against Captum's NeuronDeconvolution; receptive fields against the layers' arithmetic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from research.interpret import deconvnet, receptive_field
from research.models.alexnet import AlexNet
from research.models.lenet import LeNet5
from research.models.vgg import VGG11
from research.models.zfnet import ZFNet


@pytest.fixture(scope="module")
def alexnet():
  model = AlexNet(num_classes=10, hidden=32)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 67, 67, 3)))
  return model, variables


def _unpool(values, switches_from, window, stride):
  """Explicit unpooling: each pooled value goes to its window's argmax (first in row-major
  order, as torch and XLA pick), overlapping windows adding up. [h, w, c] -> [H, W, c]."""
  x = np.asarray(switches_from)
  out = np.zeros_like(x)
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      for c in range(values.shape[2]):
        win = x[i * stride : i * stride + window, j * stride : j * stride + window, c]
        a, b = np.unravel_index(np.argmax(win), win.shape)
        out[i * stride + a, j * stride + b, c] += values[i, j, c]
  return out


def test_projection_equals_the_papers_definition(alexnet):
  model, variables = alexnet
  image = jax.random.normal(jax.random.key(1), (67, 67, 3))
  p = variables["params"]
  conv1 = lambda x: lax.conv_general_dilated(
    x[None],
    p["features.0"]["kernel"],
    (4, 4),
    ((2, 2), (2, 2)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )[0]
  conv2 = lambda x: lax.conv_general_dilated(
    x[None],
    p["features.3"]["kernel"],
    (1, 1),
    ((2, 2), (2, 2)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )[0]
  r1 = jax.nn.relu(conv1(image) + p["features.0"]["bias"])
  p1 = lax.reduce_window(r1, -jnp.inf, lax.max, (3, 3, 1), (2, 2, 1), "VALID")
  r2 = jax.nn.relu(conv2(p1) + p["features.3"]["bias"])
  channel = 5
  i, j = np.unravel_index(np.argmax(r2[..., channel]), r2.shape[:2])
  top = np.zeros(r2.shape, np.float32)
  top[i, j, channel] = r2[i, j, channel]

  # Down: rectify, transposed conv2 (the transpose of the linear map), unpool, rectify, conv1^T.
  (down,) = jax.linear_transpose(conv2, p1)(jnp.maximum(jnp.asarray(top), 0))
  down = _unpool(np.asarray(down), r1, 3, 2)
  (expected,) = jax.linear_transpose(conv1, image)(jnp.maximum(jnp.asarray(down), 0))

  got = deconvnet.project(model, variables, image, layer="relu2", channel=channel)
  assert got.shape == image.shape
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * float(jnp.abs(expected).max()))
  assert float(jnp.abs(expected).max()) > 0


def test_projection_differs_from_the_gradient(alexnet):
  # The rectification is the one step that differs from back-propagation.
  model, variables = alexnet
  image = jax.random.normal(jax.random.key(2), (67, 67, 3))
  values, positions = deconvnet.strongest_units(model, variables, image[None], layer="relu3")
  c = int(jnp.argmax(values[0]))
  i, j = positions[0, c]
  got = deconvnet.project(model, variables, image, layer="relu3", channel=c)
  grad = jax.grad(lambda x: model.apply(variables, x[None])[1]["relu3"][0, i, j, c])(image)
  assert float(values[0, c]) > 0 and float(jnp.abs(grad).max()) > 0
  assert not np.allclose(got, values[0, c] * grad, rtol=1e-2, atol=0)


@pytest.mark.parametrize(
  "model, shape, expected",
  [
    # AlexNet conv1 11/4 pad 2 (4, 11, -2), pool 3/2 (8, 19, -2), conv2 5 pad 2 (8, 51, -18),
    # pool 3/2 (16, 67, -18).
    (
      AlexNet(num_classes=10, hidden=8),
      (67, 67, 3),
      {"conv1": (4, 11, -2), "relu2": (8, 51, -18), "pool2": (16, 67, -18)},
    ),
    # ZFNet conv1 7/2 pad 1, pool 3/2 pad 1, conv2 5/2: jump 8, size 7 + 2*2 + 4*4 = 27.
    (ZFNet(num_classes=10, hidden=8), (53, 53, 3), {"pool1": (4, 11, -3), "relu2": (8, 27, -3)}),
    # VGG: two 3x3 convs then a 2x2 pool: jump 2, size 6, start -2.
    (VGG11(num_classes=10, hidden=8), (32, 32, 3), {"relu1_1": (1, 3, -1), "pool1": (2, 4, -1)}),
    (LeNet5(), (32, 32, 1), {"pool1": (2, 6, 0), "conv3": (4, 32, 0)}),
  ],
  ids=["alexnet", "zfnet", "vgg11", "lenet5"],
)
def test_receptive_fields_follow_the_layer_arithmetic(model, shape, expected):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
  for layer, (jump, size, start) in expected.items():
    field = receptive_field.receptive_field(model, variables, shape, layer)
    assert (field.jump, field.size, field.start) == ((jump,) * 2, (size,) * 2, (start,) * 2), layer
  assert receptive_field.receptive_field(model, variables, shape, "logits").whole


def test_top_activations_stay_inside_receptive_fields(alexnet):
  model, variables = alexnet
  images = np.asarray(jax.random.normal(jax.random.key(3), (12, 67, 67, 3)))
  top = deconvnet.top_activations(model, variables, images, layer="relu2", channels=[0, 3], k=4)
  assert top["projections"].shape == (2, 4, 51, 51, 3) == top["patches"].shape
  # The strongest unit of each map over the data set comes first, one image each.
  _, out = model.apply(variables, jnp.asarray(images))
  best = np.asarray(out["relu2"]).max(axis=(1, 2))[:, [0, 3]]
  np.testing.assert_allclose(top["values"][:, 0], best.max(axis=0), rtol=1e-6)
  np.testing.assert_allclose(top["values"], -np.sort(-best.T, axis=1)[:, :4], rtol=1e-6)
  assert (np.diff(top["values"], axis=1) <= 0).all()
  np.testing.assert_allclose(top["inside_energy"], 1.0, atol=1e-6)
  assert (np.abs(top["projections"]).sum(axis=(2, 3, 4)) > 0).all()


def test_bad_input(alexnet):
  model, variables = alexnet
  image = jnp.zeros((67, 67, 3))
  with pytest.raises(ValueError, match="no layer 'conv9'.*relu2"):
    deconvnet.project(model, variables, image, layer="conv9", channel=0)
  with pytest.raises(ValueError, match="channel: expected an integer in \\[0, 192\\), got 192"):
    deconvnet.project(model, variables, image, layer="relu2", channel=192)
  with pytest.raises(ValueError, match="image must be one image of shape \\[H, W, C\\]"):
    deconvnet.project(model, variables, image[None], layer="relu2", channel=0)
  with pytest.raises(ValueError, match="k: expected 1 <= k <= the number of images \\(1\\)"):
    deconvnet.top_activations(model, variables, image[None], layer="relu2", channels=[0], k=9)


def test_projection_matches_captum_neuron_deconvolution():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  captum_attr = pytest.importorskip("captum.attr")
  from research.convert import torchvision as tv

  torch.manual_seed(0)
  net = torchvision.models.alexnet(num_classes=10).eval()
  for m in net.modules():  # Captum hooks ReLU modules; in-place ones cannot be hooked.
    if isinstance(m, torch.nn.ReLU):
      m.inplace = False
  model = AlexNet(num_classes=10)
  variables = tv.convert(net.state_dict(), model, input_shape=(1, 99, 99, 3))
  image = np.random.default_rng(0).normal(size=(99, 99, 3)).astype(np.float32)
  x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).requires_grad_()
  deconv = captum_attr.NeuronDeconvolution(net, net.features[9])  # relu4
  values, positions = deconvnet.strongest_units(
    model, variables, jnp.asarray(image)[None], layer="relu4"
  )
  # Three live feature maps (a map with no positive unit projects to zero).
  for channel in np.argsort(-np.asarray(values[0]))[[0, 10, 50]]:
    assert values[0, channel] > 0
    ours = np.asarray(
      deconvnet.project(model, variables, jnp.asarray(image), layer="relu4", channel=channel)
    )
    i, j = (int(v) for v in positions[0, channel])
    theirs = (
      deconv.attribute(x, neuron_selector=(channel, i, j))[0].detach().numpy().transpose(1, 2, 0)
    )
    cosine = (ours * theirs).sum() / (np.linalg.norm(ours) * np.linalg.norm(theirs))
    assert cosine >= 0.9999, (channel, cosine)
