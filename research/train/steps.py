"""Pure train and eval steps. Callers compile them with `jax.jit` or `jax.pmap`.

The model is called as `model.apply(variables, batch["image"], train=...,
**model_kwargs(batch, train=...))`: a task passes what else its model needs (a
detector's ground truth in training). Training gives the model two random streams,
"dropout" and "sample" (RoI sampling, say), both derived from (state.rng, step) only,
so a resumed run and every parallel layout draw the same numbers.

Under pmap pass `axis_name="batch"`: gradients, batch statistics and metrics
are then averaged across devices with `lax.pmean`, so every replica applies
the same update. Under jit with sharded inputs, XLA inserts the same
reductions itself and `axis_name` stays None.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from research.train.state import TrainState

LossFn = Callable[..., dict]


def no_model_kwargs(batch: dict, *, train: bool) -> dict:
  """The classifiers' extra model arguments: none."""
  del batch, train
  return {}


def step_rngs(rng: jnp.ndarray, step: jnp.ndarray) -> dict:
  """{"dropout", "sample"} keys of one step, functions of (rng, step) only.

  "dropout" is fold_in(rng, step), the key this codebase has always used, so runs
  measured before "sample" existed reproduce bit for bit; "sample" is derived from it.
  """
  dropout = jax.random.fold_in(rng, step)
  return {"dropout": dropout, "sample": jax.random.fold_in(dropout, 1)}


def example_index(batch_size: int, axis_name: str | None = None) -> jnp.ndarray:
  """[B] int32: each row's position in the global batch, under jit (the whole batch) and
  under pmap (device i holds rows i * B .. i * B + B - 1)."""
  rows = jnp.arange(batch_size, dtype=jnp.int32)
  if axis_name is None:
    return rows
  return lax.axis_index(axis_name).astype(jnp.int32) * batch_size + rows


def example_keys(key: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """[B] keys, one per example, from a step's key and the examples' global `index`: what a
  model draws per image (a detector's RoI sample) is then the same on one device, under
  pmap and under sharded jit."""
  return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def variables_of(state: TrainState) -> dict:
  """{"params", and "batch_stats" when the model has any} of `state`."""
  variables = {"params": state.params}
  if jax.tree.leaves(state.batch_stats):
    variables["batch_stats"] = state.batch_stats
  return variables


def apply_model(state: TrainState, batch: dict, *, model: nn.Module, model_kwargs=None):
  """The model's evaluation-mode outputs on `batch` (no randomness, no state update)."""
  kwargs = (model_kwargs or no_model_kwargs)(batch, train=False)
  return model.apply(variables_of(state), batch["image"], train=False, **kwargs)


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model: nn.Module,
  loss_fn: LossFn,
  model_kwargs: Callable[..., dict] | None = None,
  input_gradient_penalty: float = 0.0,
  axis_name: str | None = None,
) -> tuple[TrainState, dict]:
  """One gradient step on `batch` ({"image": [B, H, W, C], ...}).

  `loss_fn((logits, out), batch) -> {"loss": scalar, ...}`. Returns the new
  state and the loss dict (device-averaged under pmap).

  `input_gradient_penalty` lambda > 0 adds lambda * mean_i ||d loss_i / d image_i||^2,
  the squared gradient of each image's loss with respect to its pixels (double
  backpropagation, Drucker & LeCun 1992; Ross & Doshi-Velez 2018), reported as
  "input_gradient_penalty"; it costs a second backward pass.
  """
  # Fresh keys per step that do not depend on how steps are batched or resumed.
  rngs = step_rngs(state.rng, state.step)
  has_bn = bool(jax.tree.leaves(state.batch_stats))
  # The task sees each row's global index, for per-example random draws (example_keys).
  indexed = {**batch, "example_index": example_index(batch["image"].shape[0], axis_name)}
  kwargs = (model_kwargs or no_model_kwargs)(indexed, train=True)

  def forward(params, images):
    variables = {"params": params}
    if has_bn:
      variables["batch_stats"] = state.batch_stats
    outputs, updates = model.apply(
      variables,
      images,
      train=True,
      rngs=rngs,
      mutable=["batch_stats"] if has_bn else [],
      **kwargs,
    )
    losses = loss_fn(outputs, batch)
    return losses["loss"], (losses, updates.get("batch_stats", state.batch_stats))

  def compute_loss(params):
    images = batch["image"]
    if not input_gradient_penalty:
      return forward(params, images)
    (loss, (losses, batch_stats)), d_images = jax.value_and_grad(forward, 1, has_aux=True)(
      params, images
    )
    # d(mean loss)/d image_i is d loss_i / d image_i over the batch size B, so
    # mean_i ||d loss_i / d image_i||^2 = B * sum ||d(mean loss)/d images||^2.
    penalty = images.shape[0] * jnp.sum(jnp.square(d_images.astype(jnp.float32)))
    losses = {**losses, "input_gradient_penalty": penalty}
    return loss + input_gradient_penalty * penalty, (losses, batch_stats)

  grads, (losses, batch_stats) = jax.grad(compute_loss, has_aux=True)(state.params)
  if axis_name is not None:
    grads, batch_stats, losses = lax.pmean((grads, batch_stats, losses), axis_name)
  return state.apply_gradients(grads, batch_stats), losses


def eval_step(
  state: TrainState,
  batch: dict,
  *,
  model: nn.Module,
  metrics_fn: Callable[..., dict],
  model_kwargs: Callable[..., dict] | None = None,
  axis_name: str | None = None,
) -> dict:
  """Metric sums over `batch` (rows with batch["mask"] False contribute nothing)."""
  sums = metrics_fn(apply_model(state, batch, model=model, model_kwargs=model_kwargs), batch)
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums
