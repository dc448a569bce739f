"""Occlusion maps: incremental inference equals whole-image inference on six model families,
the maps equal Captum's Occlusion, and bad input fails clearly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.interpret import graph, incremental, occlusion
from research.models.alexnet import AlexNet
from research.models.densenet import DenseNet
from research.models.lenet import LeNet5
from research.models.resnet import ResNet18
from research.models.vgg import VGG11_BN
from research.models.zfnet import ZFNet


def _init(model, shape):
  variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
  if "batch_stats" in variables:  # Non-trivial statistics, so eval-mode batch norm matters.
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5) for k, v in zip(keys, leaves)]
    variables = {**variables, "batch_stats": jax.tree.unflatten(tree, leaves)}
  return variables


@pytest.mark.parametrize(
  "model, shape, layer",
  [
    (LeNet5(), (32, 32, 1), "tanh3"),
    (AlexNet(num_classes=10, hidden=16), (79, 79, 3), "relu5"),
    (ZFNet(num_classes=10, in_channels=1, hidden=16), (64, 64, 1), "norm2"),
    (VGG11_BN(num_classes=10, hidden=16), (32, 32, 3), "relu4_2"),
    (ResNet18(num_classes=10), (40, 40, 3), "stage2"),
    (
      DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=10),
      (36, 36, 3),
      "logits",
    ),
  ],
  ids=["lenet5", "alexnet", "zfnet", "vgg11_bn", "resnet18", "densenet"],
)
def test_incremental_equals_whole_images(model, shape, layer):
  variables = _init(model, shape)
  image = jax.random.normal(jax.random.key(2), shape)
  fn = lambda x: (model.apply(variables, x)[1][layer],)
  closed = graph.trace(fn, image[None])
  rng = np.random.default_rng(0)
  patch = (9, 7)
  origin = np.stack(
    [rng.integers(0, shape[0] - patch[0] + 1, 12), rng.integers(0, shape[1] - patch[1] + 1, 12)], -1
  )
  origin[:2] = [[0, 0], [shape[0] - patch[0], shape[1] - patch[1]]]  # both corners
  dirty = jax.random.normal(jax.random.key(3), (12, *patch, shape[2]))
  (got,) = jax.jit(lambda d, o: incremental.occluded(closed, closed.consts, image, d, o))(
    dirty, origin
  )
  images = jnp.stack(
    [image.at[r : r + patch[0], c : c + patch[1]].set(d) for (r, c), d in zip(origin, dirty)]
  )
  want = model.apply(variables, images)[1][layer]
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


def test_maps_follow_the_definition():
  model = AlexNet(num_classes=5, hidden=16)
  variables = _init(model, (71, 71, 3))
  image = jax.random.normal(jax.random.key(4), (71, 71, 3))
  model_fn = lambda x: model.apply(variables, x)
  maps = occlusion.occlusion(
    model_fn, image, 2, patch=24, stride=(10, 15), fill=0.5, layer="relu5", chunk_size=5
  )
  whole = occlusion.occlusion(
    model_fn, image, 2, patch=24, stride=(10, 15), fill=0.5, layer="relu5", use_incremental=False
  )
  np.testing.assert_array_equal(maps["rows"], [0, 10, 20, 30, 40])
  np.testing.assert_array_equal(maps["cols"], [0, 15, 30, 45])
  logits, out = model_fn(image[None])
  channel = int(jnp.argmax(out["relu5"][0].sum(axis=(0, 1))))
  assert maps["channel"] == channel
  for i, r in enumerate(maps["rows"]):
    for j, c in enumerate(maps["cols"]):
      logits, out = model_fn(image.at[r : r + 24, c : c + 24].set(0.5)[None])
      probs = jax.nn.softmax(logits[0])
      np.testing.assert_allclose(maps["probability"][i, j], probs[2], rtol=1e-4)
      assert maps["top_class"][i, j] == int(jnp.argmax(probs))
      np.testing.assert_allclose(
        maps["activation"][i, j], out["relu5"][0, ..., channel].sum(), rtol=1e-4
      )
  for key in ("probability", "top_probability", "activation"):
    np.testing.assert_allclose(maps[key], whole[key], rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(maps["top_class"], whole["top_class"])


def test_bad_input():
  model = LeNet5()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  model_fn = lambda x: model.apply(variables, x)
  image = jnp.zeros((32, 32, 1))
  with pytest.raises(
    ValueError, match="patch: expected at most the image size \\(32, 32\\), got \\(40, 40\\)"
  ):
    occlusion.occlusion(model_fn, image, 0, patch=40, stride=4)
  with pytest.raises(ValueError, match="stride: expected a positive int or a pair of them, got 0"):
    occlusion.occlusion(model_fn, image, 0, patch=8, stride=0)
  with pytest.raises(ValueError, match="label must lie in \\[0, 10\\).*received 10"):
    occlusion.occlusion(model_fn, image, 10, patch=8, stride=4)
  with pytest.raises(ValueError, match="image must be one image of shape \\[H, W, C\\]"):
    occlusion.occlusion(model_fn, image[None], 0, patch=8, stride=4)
  with pytest.raises(ValueError, match="no layer 'relu9'; expected one of \\[.*'tanh1'"):
    occlusion.occlusion(model_fn, image, 0, patch=8, stride=4, layer="relu9")


def test_attribution_equals_captum_occlusion():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  captum_attr = pytest.importorskip("captum.attr")
  from research.convert import torchvision as tv

  torch.manual_seed(0)
  net = torchvision.models.alexnet(num_classes=10).eval()
  model = AlexNet(num_classes=10)
  size, patch, stride, label = 96, 24, 8, 4  # windows tile the image, as Captum requires
  variables = tv.convert(net.state_dict(), model, input_shape=(1, size, size, 3))
  # A bright image, so that random weights give confident predictions and occluding them
  # moves the probability by far more than float32 rounding.
  image = np.random.default_rng(0).normal(scale=30.0, size=(size, size, 3)).astype(np.float32)
  maps = occlusion.occlusion(
    lambda x: model.apply(variables, x),
    jnp.asarray(image),
    label,
    patch=patch,
    stride=stride,
    fill=0.0,
  )
  ours = occlusion.attribution(maps, (size, size), patch)
  x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
  with torch.no_grad():
    theirs = captum_attr.Occlusion(lambda t: torch.softmax(net(t), -1)).attribute(
      x,
      sliding_window_shapes=(3, patch, patch),
      strides=(3, stride, stride),
      baselines=0.0,
      target=label,
    )
  theirs = theirs[0].numpy()
  np.testing.assert_allclose(theirs[0], theirs[2], rtol=0, atol=1e-7)  # one window over channels
  np.testing.assert_allclose(ours, theirs[0], rtol=0, atol=1e-4 * np.abs(theirs).max())
  assert np.abs(theirs).max() > 1e-3
