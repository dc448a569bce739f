"""Data parallelism: the same step compiled by `jax.jit` over a device mesh or by `jax.pmap`.

jit:  state replicated, batch split along axis "batch" of a 1-D Mesh of all
      devices (every process's devices): XLA inserts the gradient all-reduce.
pmap: state replicated on the local devices, batch reshaped to
      [local_devices, B / local_devices, ...]; the step averages gradients and
      batch statistics with `lax.pmean` over axis "batch".
Both run unchanged on one CPU, several GPUs, a TPU pod slice or several hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.data.pipeline import local_batch_size

MODES = ("jit", "pmap")
AXIS = "batch"


class DataParallel:
  """Compiles steps and places state and batches for `mode` ("jit" or "pmap")."""

  def __init__(self, mode: str):
    if mode not in MODES:
      raise ValueError(f"parallelism: expected one of {MODES}; received {mode!r}.")
    self.mode = mode
    self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))
    # pmap's placement: the leading axis over this process's devices.
    self.local = NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), P(AXIS))

  def check_batch_size(self, global_batch_size: int, name: str = "batch_size") -> None:
    local = local_batch_size(global_batch_size)
    if local % jax.local_device_count():
      raise ValueError(
        f"{name}: expected a multiple of the device count {jax.device_count()}; received "
        f"{global_batch_size}."
      )

  def compile_train(self, step: Callable, **kwargs) -> Callable:
    """`step(state, batch, **kwargs, axis_name=...)` compiled; the state is donated."""
    if self.mode == "pmap":
      return jax.pmap(
        functools.partial(step, **kwargs, axis_name=AXIS), axis_name=AXIS, donate_argnums=0
      )
    return jax.jit(
      functools.partial(step, **kwargs),
      donate_argnums=0,
      out_shardings=(self.replicated, self.replicated),
    )

  def compile_eval(self, step: Callable, **kwargs) -> Callable:
    if self.mode == "pmap":
      return jax.pmap(functools.partial(step, **kwargs, axis_name=AXIS), axis_name=AXIS)
    return jax.jit(functools.partial(step, **kwargs), out_shardings=self.replicated)

  def put_state(self, state):
    """A host or single-device state -> replicated on the devices."""
    if self.mode == "pmap":
      # One replica per local device, placed as pmap places its outputs (sharded over a
      # mesh axis named AXIS): jax_utils.replicate's arrays name their axis otherwise, and
      # pmap, keyed on its inputs' placement, would compile the step a second time on the
      # second call, when it is handed its own outputs.
      n = jax.local_device_count()
      return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self.local),
        state,
      )
    return jax.device_put(state, self.replicated)

  def put_batch(self, batch: dict) -> dict:
    """This process's batch {k: [B_local, ...]} -> device arrays of the global batch."""
    if self.mode == "pmap":
      n = jax.local_device_count()
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)

  def state_for_checkpoint(self, state):
    """One copy of the state to save: pmap's replicas taken to the host."""
    if self.mode == "pmap":
      return jax.device_get(jax.tree.map(lambda x: x[0], state))
    return state

  def abstract_state(self, state):
    """The structure, dtypes and placement a checkpoint restores into."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), state)
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), state
    )

  def restored(self, state):
    """A state restored from `abstract_state` -> placed for training."""
    return self.put_state(state) if self.mode == "pmap" else state

  def rows(self, tree) -> dict:
    """Host numpy [B_global, ...] of per-example outputs of a compiled eval step, the rows of
    every process in global batch order."""
    if self.mode == "jit":
      return self.single(tree)  # compile_eval replicates its outputs: every row is here.
    local = jax.device_get(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree))
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    return multihost_utils.process_allgather(local, tiled=True)

  def single(self, tree):
    """Host numpy values of one replica of a replicated tree (state or metrics)."""
    if self.mode == "pmap":
      return jax.device_get(jax.tree.map(lambda x: x[0], tree))
    # A replicated array spanning several hosts is not fully addressable, but this
    # process holds a whole copy of it.
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
