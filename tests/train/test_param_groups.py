"""Parameter groups of research.train.optimizers: frozen, learning-rate multipliers, weight
decay where it belongs, global-norm clipping; bad patterns are errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from research.train import optimizers


def _opt(**kw):
  c = ConfigDict({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.0})
  c.update(kw)
  return c


def _params():
  return {
    "stem": {"kernel": jnp.full((3, 3, 1, 2), 2.0), "bias": jnp.full((2,), 2.0)},
    "body": {"kernel": jnp.full((2, 4), 2.0), "bias": jnp.full((4,), 2.0)},
    "fc": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)},
  }


def _grads():
  return jax.tree.map(jnp.ones_like, _params())


def test_frozen_group_gets_no_update_and_no_optimizer_state():
  opt = _opt(name="momentum", groups=[{"pattern": r"^stem/", "frozen": True}])
  tx = optimizers.make_optimizer(opt, 10)
  params = _params()
  state = tx.init(params)
  updates, state = tx.update(_grads(), state, params)
  np.testing.assert_array_equal(updates["stem"]["kernel"], 0.0)
  np.testing.assert_array_equal(updates["stem"]["bias"], 0.0)
  np.testing.assert_allclose(updates["body"]["kernel"], -0.1)
  # Momentum traces exist for body and fc only: 8 + 4 + 12 + 3 values, not the stem's 20.
  traces = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0]
  assert sum(x.size for x in traces) == 8 + 4 + 12 + 3


def test_lr_multiplier_scales_the_schedule_of_its_group_only():
  opt = _opt(groups=[{"pattern": r"^fc/", "lr_multiplier": 10.0}])
  tx = optimizers.make_optimizer(opt, 10)
  params = _params()
  updates, _ = tx.update(_grads(), tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -1.0, rtol=1e-6)
  np.testing.assert_allclose(updates["fc"]["bias"], -1.0, rtol=1e-6)
  np.testing.assert_allclose(updates["stem"]["kernel"], -0.1, rtol=1e-6)


def test_first_matching_group_takes_the_parameter():
  opt = _opt(
    groups=[{"pattern": r"bias$", "lr_multiplier": 2.0}, {"pattern": r"^fc/", "frozen": True}]
  )
  tx = optimizers.make_optimizer(opt, 10)
  params = _params()
  updates, _ = tx.update(_grads(), tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["bias"], -0.2, rtol=1e-6)  # the bias group
  np.testing.assert_array_equal(updates["fc"]["kernel"], 0.0)  # frozen


def test_weight_decay_on_kernels_by_default_and_everywhere_on_request():
  params = _params()
  tx = optimizers.make_optimizer(_opt(weight_decay=0.5), 10)
  updates, _ = tx.update(_grads(), tx.init(params), params)
  np.testing.assert_allclose(updates["body"]["kernel"], -0.1 * (1 + 0.5 * 2.0), rtol=1e-6)
  np.testing.assert_allclose(updates["body"]["bias"], -0.1, rtol=1e-6)
  tx = optimizers.make_optimizer(_opt(weight_decay=0.5, weight_decay_on="all"), 10)
  updates, _ = tx.update(_grads(), tx.init(params), params)
  np.testing.assert_allclose(updates["body"]["bias"], -0.1 * (1 + 0.5 * 2.0), rtol=1e-6)


def test_adamw_decays_kernels_only_by_default():
  params = _params()
  tx = optimizers.make_optimizer(_opt(name="adamw", weight_decay=0.5, learning_rate=1.0), 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -1.0 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(updates["fc"]["bias"], 0.0)


def test_global_norm_clipping_leaves_frozen_gradients_out():
  opt = _opt(clip_global_norm=1.0, groups=[{"pattern": r"^stem/", "frozen": True}])
  tx = optimizers.make_optimizer(opt, 10)
  params = _params()
  grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  trained = {k: v for k, v in updates.items() if k != "stem"}
  norm = float(optax.global_norm(trained))
  np.testing.assert_allclose(norm, 0.1 * 1.0, rtol=1e-5)  # lr x the clipped norm 1
  np.testing.assert_array_equal(updates["stem"]["kernel"], 0.0)


def test_a_pattern_that_matches_no_parameter_is_an_error_listing_paths():
  tx = optimizers.make_optimizer(_opt(groups=[{"pattern": r"^head/", "frozen": True}]), 10)
  with pytest.raises(ValueError, match=r"groups\[0\]\.pattern: '\^head/' matches no parameter"):
    tx.init(_params())
  # Shadowed by an earlier group: said so.
  opt = _opt(groups=[{"pattern": r"kernel", "frozen": True}, {"pattern": r"^fc/kernel"}])
  tx = optimizers.make_optimizer(opt, 10)
  with pytest.raises(ValueError, match=r"left by the groups before it"):
    tx.init(_params())


@pytest.mark.parametrize(
  "group, message",
  [
    ({"regex": "fc"}, r"groups\[0\]: expected the keys"),
    ({"pattern": "(fc"}, r"groups\[0\]\.pattern: '\(fc' is no regex"),
    ({"pattern": "fc", "lr_multiplier": -1.0}, r"lr_multiplier: expected a number >= 0"),
    ({"pattern": "fc", "frozen": True, "lr_multiplier": 2.0}, r"frozen group takes no"),
  ],
)
def test_malformed_groups_are_errors(group, message):
  with pytest.raises(ValueError, match=message):
    optimizers.make_optimizer(_opt(groups=[group]), 10)


def test_unknown_weight_decay_target_and_negative_clip():
  with pytest.raises(ValueError, match=r"weight_decay_on: expected one of \('kernels', 'all'\)"):
    optimizers.make_optimizer(_opt(weight_decay_on="biases"), 10)
  with pytest.raises(ValueError, match=r"clip_global_norm: expected a number >= 0"):
    optimizers.make_optimizer(_opt(clip_global_norm=-1.0), 10)
