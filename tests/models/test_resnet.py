"""ResNets and Wide ResNets: torchvision's parameter counts and logits, WRN-28-10's 36.5M."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.models import resnet
from research.train.state import param_count
from tests.conftest import randomize_batch_norms

# torchvision's counts for 1000 classes.
COUNTS = {
  "ResNet18": ("resnet18", 11_689_512),
  "ResNet34": ("resnet34", 21_797_672),
  "ResNet50": ("resnet50", 25_557_032),
  "ResNet101": ("resnet101", 44_549_160),
  "ResNet152": ("resnet152", 60_192_808),
  "WideResNet50_2": ("wide_resnet50_2", 68_883_240),
  "WideResNet101_2": ("wide_resnet101_2", 126_886_696),
}


def _count(model, input_shape=(1, 32, 32, 3)):
  """Parameters of `model`, through eval_shape (nothing is computed)."""
  return param_count(tv.abstract_variables(model, input_shape)["params"])


@pytest.mark.parametrize("variant", list(COUNTS))
def test_parameter_counts_equal_torchvision(variant):
  tv_name, expected = COUNTS[variant]
  assert _count(getattr(resnet, variant)()) == expected
  # 512 * e features into the classifier: 10 classes save 990 * (512 * e + 1).
  features = 512 if variant in ("ResNet18", "ResNet34") else 2048
  assert _count(getattr(resnet, variant)(num_classes=10)) == expected - 990 * (features + 1)
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  with torch.device("meta"):  # shapes only, no initialization
    net = getattr(torchvision.models, tv_name)()
  assert sum(p.numel() for p in net.parameters()) == expected


def test_stages_are_named_with_their_shapes():
  def shapes(model, size):
    variables = tv.abstract_variables(model, (2, size, size, 3))
    _, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3))), variables)
    return {k: v.shape for k, v in out.items()}

  assert shapes(resnet.ResNet50(), 224) == {
    "stem": (2, 56, 56, 64),
    "stage1": (2, 56, 56, 256),
    "stage2": (2, 28, 28, 512),
    "stage3": (2, 14, 14, 1024),
    "stage4": (2, 7, 7, 2048),
    "pre_logits": (2, 2048),
    "logits": (2, 1000),
  }
  # The minimum input, 1x1, stays 1x1 through every stage.
  assert shapes(resnet.ResNet18(num_classes=10), 1) == {
    "stem": (2, 1, 1, 64),
    "stage1": (2, 1, 1, 64),
    "stage2": (2, 1, 1, 128),
    "stage3": (2, 1, 1, 256),
    "stage4": (2, 1, 1, 512),
    "pre_logits": (2, 512),
    "logits": (2, 10),
  }
  assert shapes(resnet.WRN28_10(), 32) == {
    "stem": (2, 32, 32, 16),
    "stage1": (2, 32, 32, 160),
    "stage2": (2, 16, 16, 320),
    "stage3": (2, 8, 8, 640),
    "pre_logits": (2, 640),
    "logits": (2, 10),
  }


def _randomize_batch_norms(torch, net):
  return randomize_batch_norms(torch, net, mean=0.1, var=(0.5, 1.5), bias=0.1).eval()


def _assert_parity(torch, net, model, shape):
  variables = tv.convert(net.state_dict(), model, input_shape=shape)
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  ours, _ = model.apply(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@pytest.mark.parametrize(
  "variant, size",
  [
    ("ResNet18", (224, 224)),
    ("ResNet18", (97, 131)),
    ("ResNet50", (224, 224)),
    ("ResNet50", (97, 131)),
    ("WideResNet50_2", (64, 64)),
  ],
)
def test_logits_equal_torchvision_with_the_same_weights(variant, size):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  net = _randomize_batch_norms(torch, getattr(torchvision.models, COUNTS[variant][0])(weights=None))
  _assert_parity(torch, net, getattr(resnet, variant)(), (1, *size, 3))


@pytest.mark.parametrize(
  "shape, fragment",
  [
    ((16, 16, 3), "rank 3"),
    ((2, 16, 16, 1), "3 channel(s)"),
    ((2, 0, 16, 3), "at least 1x1"),
  ],
)
def test_wrong_images_name_expected_and_received_shape(shape, fragment):
  for model in (resnet.ResNet18(), resnet.WRN28_10()):
    with pytest.raises(ValueError) as e:  # raised before any layer runs
      model.init(jax.random.PRNGKey(0), jnp.zeros(shape))
    assert fragment in str(e.value)
    assert str(shape) in str(e.value)
    assert "[N, H, W, 3]" in str(e.value) or "1x1" in str(e.value)


def test_convert_names_the_classifier_when_num_classes_differ():
  torchvision = pytest.importorskip("torchvision")
  net = torchvision.models.resnet18(weights=None)
  with pytest.raises(
    ValueError, match=r"fc.weight: model needs \(512, 10\), weights have \(512, 1000\)"
  ):
    tv.convert(net.state_dict(), resnet.ResNet18(num_classes=10), input_shape=(1, 32, 32, 3))


def _numpy_variables(model, input_shape, seed=0):
  """Random variables of the model's shapes, drawn by NumPy.

  Cheaper than `model.init`, whose per-shape random kernels each compile.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if name == "kernel":
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, tv.abstract_variables(model, input_shape))


def _train_step(model, variables, x, y, rng):
  """Gradients of the cross-entropy and the new batch statistics, in training mode."""

  def loss_fn(params):
    (logits, _), updates = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return loss, updates["batch_stats"]

  return jax.grad(loss_fn, has_aux=True)(variables["params"])


@pytest.mark.parametrize(
  "model",
  [
    resnet.ResNet(
      stage_sizes=(1, 1, 1, 1), block_cls=resnet.Bottleneck, num_filters=4, num_classes=3
    ),
    resnet.WideResNet(depth=10, widen_factor=1, dropout_rate=0.3, num_classes=3),
  ],
  ids=["tiny_bottleneck_resnet", "wrn_10_1_dropout"],
)
def test_one_training_step_has_finite_gradients_and_updates_batch_stats(model):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  y = jnp.array([0, 2])
  variables = _numpy_variables(model, x.shape)
  step = jax.jit(functools.partial(_train_step, model))
  grads, batch_stats = step(variables, x, y, jax.random.PRNGKey(2))
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert all(bool(jnp.abs(g).max() > 0) for g in jax.tree.leaves(grads))
  old, new = variables["batch_stats"], batch_stats
  assert jax.tree.structure(old) == jax.tree.structure(new)
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  if getattr(model, "dropout_rate", 0.0):  # another dropout mask, other gradients
    other, _ = step(variables, x, y, jax.random.PRNGKey(3))
    assert not np.allclose(grads["fc"]["kernel"], other["fc"]["kernel"])


def _wrn_count(depth, k, num_classes):
  """WRN parameters by hand: convs without bias, BN scale + bias, fc with bias."""
  n = (depth - 4) // 6
  total, c_in = 3 * 16 * 9, 16  # stem conv 3x3, 3 -> 16
  for i, width in enumerate((16 * k, 32 * k, 64 * k)):
    for j in range(n):
      total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width  # bn1 conv1 bn2 conv2
      if c_in != width or (i > 0 and j == 0):  # 1x1 shortcut where the shape changes
        total += c_in * width
      c_in = width
  return total + 2 * c_in + (c_in + 1) * num_classes  # final BN, fc


def test_wrn28_10_has_the_papers_36_5m_parameters():
  assert _wrn_count(28, 10, 10) == 36_479_194  # the paper's "36.5M"
  assert _count(resnet.WRN28_10()) == 36_479_194
  assert _count(resnet.WRN28_10(num_classes=100)) == 36_479_194 + 90 * 641
  assert _count(resnet.WideResNet(depth=16, widen_factor=8, num_classes=10)) == _wrn_count(
    16, 8, 10
  )
  # Width 16 at k = 1: the first group keeps its shape and has no shortcut conv.
  assert _count(resnet.WideResNet(depth=40, widen_factor=1)) == _wrn_count(40, 1, 10)


@pytest.mark.parametrize("depth", [4, 27, 29, 30])
def test_wrn_depth_must_be_6n_plus_4(depth):
  model = resnet.WideResNet(depth=depth, widen_factor=2)
  with pytest.raises(ValueError, match=f"6n \\+ 4.*depth={depth}"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_wrn_dropout_is_off_in_evaluation():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  plain = resnet.WideResNet(depth=10, widen_factor=1)
  variables = _numpy_variables(plain, x.shape)
  ours, _ = resnet.WideResNet(depth=10, widen_factor=1, dropout_rate=0.3).apply(variables, x)
  np.testing.assert_array_equal(ours, plain.apply(variables, x)[0])


def _torch_wrn(torch, depth, k, num_classes=10):
  """The authors' WRN in PyTorch, with our module names so `convert` maps it."""
  nn = torch.nn

  class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
      super().__init__()
      self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
      self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
      self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
      self.project = c_in != c_out or stride != 1
      if self.project:
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x):
      y = torch.relu(self.bn1(x))
      shortcut = self.shortcut(y) if self.project else x
      y = self.conv2(torch.relu(self.bn2(self.conv1(y))))
      return y + shortcut

  class WRN(nn.Module):
    def __init__(self):
      super().__init__()
      n, c_in = (depth - 4) // 6, 16
      self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
      for i, width in enumerate((16 * k, 32 * k, 64 * k)):
        blocks = []
        for j in range(n):
          blocks.append(Block(c_in, width, 2 if i > 0 and j == 0 else 1))
          c_in = width
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.bn = nn.BatchNorm2d(c_in)
      self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
      x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
      return self.fc(torch.relu(self.bn(x)).mean((2, 3)))

  return WRN()


def test_wrn_logits_equal_a_pytorch_wrn_with_the_same_weights():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = _randomize_batch_norms(torch, _torch_wrn(torch, depth=16, k=2))
  _assert_parity(torch, net, resnet.WideResNet(depth=16, widen_factor=2), (2, 32, 32, 3))
