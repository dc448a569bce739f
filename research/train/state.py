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


# XLA options of the one program that initializes a model (init_variables). Its algebraic
# simplifier would fold an initializer's scale into random.normal's own constant (sqrt(2) *
# erfinv(u) * stddev as erfinv(u) * (sqrt(2) * stddev)): a last-bit change of every
# normal-initialized weight from model.init run outside jit, the values every earlier run
# (and its param_fingerprint) started from. Without that pass the program gives those values
# bit for bit; optimization level 1 halves LLVM's time and keeps them (level 0 does not).
# tests/train/test_state.py holds the equality.
INIT_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "algsimp", "xla_backend_optimization_level": 1}


def init_variables(model: nn.Module, rngs, input_shape, **kwargs) -> dict:
  """`model.init(rngs, zeros(input_shape), **kwargs)`'s variables, bit for bit, compiled as
  one program.

  model.init outside jit runs op by op, and each initializer and each layer of the forward
  pass on the zero batch compiles on its own: 600 programs and 27 s for GoogLeNet at 224, 14 s
  for the Faster R-CNN of `faster_rcnn_voc2007:runlocal`, against 8 s and 4 s here (two
  cores, no compilation cache, 2026-12-07). The forward pass, whose result init throws away,
  is removed by XLA.

  Args:
    model: a flax module.
    rngs: a PRNG key or a dict {collection: key}, as model.init takes.
    input_shape: [N, H, W, C] of the float32 zero batch.
    **kwargs: model.init's keyword arguments (train=False for the classifiers).

  Under a transformation (`jax.eval_shape` of a state's structure) it is model.init, traced.
  """

  def init(rngs):
    return model.init(rngs, jnp.zeros(input_shape, jnp.float32), **kwargs)

  if any(isinstance(key, jax.core.Tracer) for key in jax.tree.leaves(rngs)):
    return init(rngs)  # inside a transformation (jax.eval_shape of a state): traced into it
  compiled = jax.jit(init).lower(rngs).compile(compiler_options=INIT_COMPILER_OPTIONS)
  return compiled(rngs)


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, *, seed: int, input_shape
) -> TrainState:
  """Initializes parameters from `seed` on a zero batch of `input_shape` [N, H, W, C]."""
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = init_variables(
    model, {"params": init_rng, "dropout": init_rng}, input_shape, train=False
  )
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    # Zeros and copies of the parameters: one program, not one per leaf.
    opt_state=jax.jit(tx.init)(params),
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
