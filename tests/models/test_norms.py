"""FrozenBatchNorm: torchvision's FrozenBatchNorm2d, its variables out of the optimizer's reach."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.models import resnet
from research.models.norms import FrozenBatchNorm
from tests.conftest import randomize_batch_norms


def _stats(rng, c):
  return {
    "scale": rng.uniform(0.5, 1.5, c),
    "bias": rng.normal(0, 0.5, c),
    "mean": rng.normal(0, 0.5, c),
    "var": rng.uniform(0.5, 2.0, c),
  }


def test_all_four_arrays_are_batch_stats_and_none_are_params():
  variables = FrozenBatchNorm().init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 3, 5)))
  assert set(variables) == {"batch_stats"}
  stats = variables["batch_stats"]
  assert {k: (v.shape, v.dtype) for k, v in stats.items()} == {
    k: ((5,), jnp.float32) for k in ("scale", "bias", "mean", "var")
  }
  np.testing.assert_array_equal(stats["scale"], 1)
  np.testing.assert_array_equal(stats["var"], 1)


def test_formula_and_training_leave_the_statistics_unchanged():
  rng = np.random.default_rng(0)
  stats = {k: jnp.asarray(v, jnp.float32) for k, v in _stats(rng, 4).items()}
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  # The families build their norm with these arguments, in training too.
  norm = FrozenBatchNorm(use_running_average=False, momentum=0.9)
  y, updates = norm.apply({"batch_stats": stats}, x, mutable=["batch_stats"])
  expected = (x - stats["mean"]) * stats["scale"] / jnp.sqrt(stats["var"] + 1e-5) + stats["bias"]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  for k in stats:
    np.testing.assert_array_equal(updates["batch_stats"][k], stats[k])


def test_equals_torchvision_frozen_batch_norm():
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(1)
  stats = _stats(rng, 6)
  theirs = ops.FrozenBatchNorm2d(6)
  with torch.no_grad():
    for ours_name, torch_name in [
      ("scale", "weight"),
      ("bias", "bias"),
      ("mean", "running_mean"),
      ("var", "running_var"),
    ]:
      getattr(theirs, torch_name).copy_(torch.from_numpy(stats[ours_name]))
  x = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  y = FrozenBatchNorm().apply(
    {"batch_stats": {k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}}, jnp.asarray(x)
  )
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_computes_in_bfloat16_from_float32_statistics():
  x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
  variables = FrozenBatchNorm(dtype=jnp.bfloat16).init(jax.random.PRNGKey(0), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  assert FrozenBatchNorm(dtype=jnp.bfloat16).apply(variables, x).dtype == jnp.bfloat16


def test_resnet50_with_frozen_batch_norm_converts_torchvision_and_gives_its_logits():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  state_dict = randomize_batch_norms(
    torch, torchvision.models.resnet50(weights=None), mean=0.1, var=(0.5, 1.5), bias=0.1
  ).state_dict()
  frozen = torchvision.models.resnet50(
    weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d
  ).eval()
  frozen.load_state_dict(state_dict)  # FrozenBatchNorm2d drops num_batches_tracked
  model = resnet.ResNet50(norm=FrozenBatchNorm)
  shape = (1, 64, 80, 3)
  variables = tv.convert(state_dict, model, input_shape=shape)
  # No norm in params: an optimizer over params never sees them.
  assert not any("bn" in "/".join(p) for p in _paths(variables["params"]))
  assert "scale" in variables["batch_stats"]["bn1"]
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  ours, _ = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = frozen(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def _paths(tree):
  return [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
