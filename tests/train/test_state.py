"""create_train_state initializes a model in one compiled program with model.init's values,
bit for bit: the values of every earlier run, which ran model.init op by op."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.train.state import create_train_state, init_variables
from tests.models.test_layers import TINY


class EveryInitializer(nn.Module):
  """The initializers the models use: normal (whose scale XLA's simplifier would fold),
  truncated normal, He and LeCun normal, uniform fan-in, constants and batch statistics."""

  @nn.compact
  def __call__(self, x, *, train=False):
    init = nn.initializers
    x = nn.Conv(8, (3, 3), kernel_init=init.normal(0.01))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Conv(8, (3, 3), kernel_init=init.truncated_normal(0.02), bias_init=init.constant(0.1))(x)
    x = nn.Conv(8, (1, 1), kernel_init=init.kaiming_normal())(x)
    x = nn.Dense(16, kernel_init=init.variance_scaling(1 / 3, "fan_in", "uniform"))(x)
    x = nn.Dense(4, kernel_init=init.normal(0.001), bias_init=init.uniform(0.5))(x.mean((1, 2)))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x))


def _identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_one_program_gives_model_init_values_bit_for_bit():
  rngs = {"params": jax.random.PRNGKey(3), "dropout": jax.random.PRNGKey(4)}
  cases = [
    (EveryInitializer(), (2, 12, 12, 3), {"train": False}),
    (TINY["vgg"][0](num_classes=5), (1, 32, 32, 3), {"train": False}),
  ]
  for model, shape, kwargs in cases:
    eager = model.init(rngs, jnp.zeros(shape, jnp.float32), **kwargs)
    _identical(init_variables(model, rngs, shape, **kwargs), eager)


def test_create_train_state_starts_from_model_init_and_empty_optimizer_state():
  model = EveryInitializer()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
  state = create_train_state(model, tx, seed=5, input_shape=(1, 12, 12, 3))
  init_rng, rng = jax.random.split(jax.random.PRNGKey(5))
  eager = model.init(
    {"params": init_rng, "dropout": init_rng}, jnp.zeros((1, 12, 12, 3)), train=False
  )
  _identical(state.params, eager["params"])
  _identical(state.batch_stats, eager["batch_stats"])
  _identical(state.opt_state, tx.init(eager["params"]))
  np.testing.assert_array_equal(state.rng, rng)
  assert int(state.step) == 0
