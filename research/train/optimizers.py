"""optax optimizers and learning-rate schedules from a config.

config.optimizer:
  name: "sgd" | "momentum" | "nesterov" | "adam" | "adamw"
  learning_rate: the base (peak) rate
  momentum: for momentum / nesterov (and b1 of adam)
  weight_decay: L2 added to the gradient (sgd family, as the papers do) or
    decoupled (adamw)
  schedule: "constant" | "cosine" | "warmup_cosine" | "step" | "exponential"
  warmup_steps: linear warm-up from 0, for warmup_cosine
  boundaries, decay_factor: for "step": multiply by decay_factor at each
    boundary, given as fractions of total_steps (0.5 = half-way)
  decay_every_steps, decay_factor: for "exponential": multiply by decay_factor
    every decay_every_steps steps (GoogLeNet: 0.96 every 8 epochs)
  max_filter_rms: if set, rescale every conv filter whose RMS exceeds it back
    to it after each step (Zeiler & Fergus 2013: 0.1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "exponential")


def make_schedule(config: ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  lr = config.learning_rate
  kind = config.get("schedule", "constant")
  if kind == "constant":
    return optax.constant_schedule(lr)
  if kind == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps)
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, total_steps)
  if kind == "step":
    boundaries = {int(b * total_steps): config.decay_factor for b in config.boundaries}
    return optax.piecewise_constant_schedule(lr, boundaries)
  if kind == "exponential":
    return optax.exponential_decay(
      lr, config.decay_every_steps, config.decay_factor, staircase=True
    )
  raise ValueError(f"optimizer.schedule: expected one of {SCHEDULES}; received {kind!r}.")


def make_optimizer(config: ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation described by `config` (the `optimizer` block)."""
  name = config.name
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: expected one of {OPTIMIZERS}; received {name!r}.")
  schedule = make_schedule(config, total_steps)
  wd = config.get("weight_decay", 0.0)
  if name == "adamw":
    opt = optax.adamw(schedule, weight_decay=wd)
  else:
    if name == "adam":
      opt = optax.adam(schedule)
    elif name == "sgd":
      opt = optax.sgd(schedule)
    else:
      opt = optax.sgd(schedule, momentum=config.momentum, nesterov=name == "nesterov")
    # The papers' weight decay is an L2 term in the loss, i.e. wd * w added to the gradient.
    opt = optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
  max_rms = config.get("max_filter_rms")
  return optax.chain(opt, renormalize_filters(max_rms)) if max_rms else opt


def renormalize_filters(max_rms: float) -> optax.GradientTransformation:
  """After the update, each conv filter (kernel [kh, kw, in, out], one per `out`) whose
  root mean square exceeds `max_rms` is scaled back to it: Zeiler & Fergus's fix for
  first-layer filters that come to dominate. Other parameters are untouched.
  """

  def update(updates, state, params):
    if params is None:
      raise ValueError("renormalize_filters needs the parameters: call update(g, s, params).")

    def fix(u, p):
      if p.ndim != 4:
        return u
      new = p + u
      rms = jnp.sqrt(jnp.mean(jnp.square(new), axis=(0, 1, 2), keepdims=True))
      return new * jnp.minimum(1.0, max_rms / jnp.maximum(rms, 1e-12)) - p

    return jax.tree.map(fix, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
