"""optax optimizers and learning-rate schedules from a config.

config.optimizer:
  name: "sgd" | "momentum" | "nesterov" | "adam" | "adamw"
  learning_rate: the base (peak) rate
  momentum: for momentum / nesterov (and b1 of adam)
  weight_decay: L2 added to the gradient (sgd family, as the papers do) or
    decoupled (adamw)
  schedule: "constant" | "cosine" | "warmup_cosine" | "step"
  warmup_steps: linear warm-up from 0, for warmup_cosine
  boundaries, decay_factor: for "step": multiply by decay_factor at each
    boundary, given as fractions of total_steps (0.5 = half-way)
"""

from __future__ import annotations

import optax
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")


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
  raise ValueError(f"optimizer.schedule: expected one of {SCHEDULES}; received {kind!r}.")


def make_optimizer(config: ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation described by `config` (the `optimizer` block)."""
  name = config.name
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: expected one of {OPTIMIZERS}; received {name!r}.")
  schedule = make_schedule(config, total_steps)
  wd = config.get("weight_decay", 0.0)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd)
  if name == "adam":
    opt = optax.adam(schedule)
  elif name == "sgd":
    opt = optax.sgd(schedule)
  else:
    opt = optax.sgd(schedule, momentum=config.momentum, nesterov=name == "nesterov")
  # The papers' weight decay is an L2 term in the loss, i.e. wd * w added to the gradient.
  return optax.chain(optax.add_decayed_weights(wd), opt) if wd else opt
