"""The train state: everything a run needs to continue exactly where it stopped."""

from __future__ import annotations

import hashlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """step [], params, batch_stats, opt_state, rng [2] uint32; `tx` is static.

  Checkpoints hold the pytree fields; `tx` comes from the config again.
  """

  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  def apply_gradients(self, grads, batch_stats) -> TrainState:
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(
      step=self.step + 1,
      params=optax.apply_updates(self.params, updates),
      opt_state=opt_state,
      batch_stats=batch_stats,
    )


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, *, seed: int, input_shape
) -> TrainState:
  """Initializes parameters from `seed` on a zero batch of `input_shape` [N, H, W, C]."""
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(
    {"params": init_rng, "dropout": init_rng}, jnp.zeros(input_shape, jnp.float32), train=False
  )
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=rng,
    tx=tx,
  )


def param_fingerprint(params) -> str:
  """sha256 of the parameters' float32 bytes in tree order: equal iff bit-identical."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf), np.float32)).tobytes())
  return h.hexdigest()


def param_count(params) -> int:
  """The number of scalars in `params`."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
