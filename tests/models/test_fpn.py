"""FeaturePyramidNetwork: torchvision's outputs through `convert`, its init, its errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.convert import torchvision as tv
from research.models import fpn as fpn_lib
from research.models.fpn import FeaturePyramidNetwork

# Four levels of a stride-4..32 backbone on a 100x152 image: odd sizes on purpose.
SHAPES = {"0": (2, 25, 38, 8), "1": (2, 13, 19, 16), "2": (2, 7, 10, 24), "3": (2, 4, 5, 32)}


def _inputs(seed=0, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize(
  "n_in, n_out",
  [(13, 25), (7, 13), (4, 7), (10, 19), (5, 10), (3, 3), (25, 13), (6, 7)],
)
def test_nearest_indices_equal_torch_interpolate(n_in, n_out):
  torch = pytest.importorskip("torch")
  x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, 1, n_in)
  expected = torch.nn.functional.interpolate(x, size=(1, n_out), mode="nearest")
  np.testing.assert_array_equal(
    fpn_lib.nearest_indices(n_in, n_out), expected.reshape(-1).numpy().astype(int)
  )


@pytest.mark.parametrize("extra_blocks", ["pool", None])
def test_outputs_equal_torchvision_through_convert(extra_blocks):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

  torch.manual_seed(0)
  channels = [s[-1] for s in SHAPES.values()]
  theirs = ops.FeaturePyramidNetwork(
    channels, 12, extra_blocks=LastLevelMaxPool() if extra_blocks else None
  ).eval()
  with torch.no_grad():  # torchvision zeroes the biases; make them count
    for name, p in theirs.named_parameters():
      if name.endswith("bias"):
        p.uniform_(-0.5, 0.5)
  model = FeaturePyramidNetwork(channels, 12, extra_blocks=extra_blocks)
  inputs = _inputs()
  variables = tv.convert(theirs.state_dict(), model, inputs=inputs)
  # Under jit, whose sorted keys "0".."3" are the resolution order.
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, inputs)
  with torch.no_grad():
    expected = theirs({k: torch.from_numpy(v.transpose(0, 3, 1, 2)) for k, v in inputs.items()})
  assert list(ours) == list(expected) == ["0", "1", "2", "3"] + (["pool"] if extra_blocks else [])
  for k, v in expected.items():
    v = v.numpy().transpose(0, 2, 3, 1)
    assert ours[k].shape == v.shape
    np.testing.assert_allclose(np.asarray(ours[k]), v, rtol=1e-4, atol=1e-4 * np.abs(v).max())
  if extra_blocks:
    assert ours["pool"].shape == (2, 2, 3, 12)


def test_torchvision_state_dict_keys_are_the_flax_paths():
  ops = pytest.importorskip("torchvision.ops")
  theirs = ops.FeaturePyramidNetwork([8, 16], 4)
  shapes = tv.abstract_variables(
    FeaturePyramidNetwork([8, 16], 4),
    inputs=_inputs(shapes={"a": (1, 8, 8, 8), "b": (1, 4, 4, 16)}),
  )
  ours = {
    tv.torchvision_key("params", tuple(k.key for k in path))
    for path, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  }
  assert ours == set(theirs.state_dict())


def test_init_is_torchvisions_kaiming_uniform_a1_with_zero_biases():
  model = FeaturePyramidNetwork([64, 128], 128)
  x = {"c4": jnp.zeros((1, 4, 4, 64)), "c5": jnp.zeros((1, 2, 2, 128))}
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  kernel = np.asarray(params["layer_blocks.0.0"]["kernel"])  # fan_in 3 * 3 * 128
  bound = np.sqrt(3.0 / (9 * 128))
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.01)
  lateral = np.asarray(params["inner_blocks.0.0"]["kernel"])  # fan_in 64
  assert lateral.shape == (1, 1, 64, 128)
  np.testing.assert_allclose(lateral.std(), 1 / np.sqrt(64), rtol=0.02)
  for block in params.values():
    np.testing.assert_array_equal(block["bias"], 0)


def test_bfloat16_computes_in_bfloat16_with_float32_params():
  model = FeaturePyramidNetwork([8, 16], 4, dtype=jnp.bfloat16)
  x = {"0": jnp.ones((1, 8, 8, 8)), "1": jnp.ones((1, 4, 4, 16))}
  variables = model.init(jax.random.PRNGKey(0), x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert {v.dtype for v in model.apply(variables, x).values()} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize(
  "features, fragment",
  [
    ({"0": jnp.zeros((1, 8, 8, 8))}, "2 maps [N, H, W, C] with C in [8, 16]"),
    ({"0": jnp.zeros((1, 8, 8, 8)), "1": jnp.zeros((1, 4, 4, 12))}, "'1': (1, 4, 4, 12)"),
    ({"1": jnp.zeros((1, 4, 4, 8)), "0": jnp.zeros((1, 8, 8, 16))}, "highest resolution"),
    ([jnp.zeros((1, 8, 8, 8))], "dict of [N, H, W, C] maps"),
  ],
)
def test_wrong_features_name_expected_and_received(features, fragment):
  model = FeaturePyramidNetwork([8, 16], 4)
  with pytest.raises(ValueError) as e:
    model.init(jax.random.PRNGKey(0), features)
  assert fragment in str(e.value)


def test_unknown_extra_blocks_is_an_error():
  with pytest.raises(ValueError, match="extra_blocks must be 'pool' or None; received 'p6p7'"):
    FeaturePyramidNetwork([8], 4, extra_blocks="p6p7").init(
      jax.random.PRNGKey(0), {"0": jnp.zeros((1, 4, 4, 8))}
    )
