"""optax optimizers and learning-rate schedules from a config.

config.optimizer:
  name: "sgd" | "momentum" | "nesterov" | "adam" | "adamw"
  learning_rate: the base (peak) rate
  momentum: for momentum / nesterov (and b1 of adam)
  weight_decay: L2 added to the gradient (sgd family, as the papers do) or
    decoupled (adamw)
  schedule: "constant" | "cosine" | "warmup_cosine" | "step" | "exponential"
  warmup_steps: linear warm-up from 0 over this many steps: warmup_cosine's own; any other
    schedule is multiplied by min(1, step / warmup_steps) (torchvision's detection recipe
    warms its step schedule up this way)
  boundaries, decay_factor: for "step": multiply by decay_factor at each
    boundary, given as fractions of total_steps (0.5 = half-way)
  decay_every_steps, decay_factor: for "exponential": multiply by decay_factor
    every decay_every_steps steps (GoogLeNet: 0.96 every 8 epochs)
  max_filter_rms: if set, rescale every conv filter whose RMS exceeds it back
    to it after each step (Zeiler & Fergus 2013: 0.1)
  weight_decay_on: "kernels" (default: conv and dense kernels only; no decay on biases
    and normalization scales) or "all" (every parameter, as the classification recipes
    measured before parameter groups existed)
  clip_global_norm: if > 0, gradients (frozen ones left out) are scaled so their global
    L2 norm is at most this
  groups: parameter groups, a list of {"pattern": regex, "frozen": bool,
    "lr_multiplier": float}, matched with re.search against each parameter's path
    ("layer1.0/conv1/kernel"); the first group that matches takes the parameter, the
    rest form the default group. A frozen group gets no update and no optimizer state
    (fine-tuning's frozen stem); lr_multiplier scales the schedule (a new head at 10x).
    A pattern that matches no parameter is an error.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "exponential")
DECAY_ON = ("kernels", "all")
GROUP_KEYS = ("pattern", "frozen", "lr_multiplier")
DEFAULT_GROUP, FROZEN = "default", "frozen"


def make_schedule(config: ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step."""
  kind = config.get("schedule", "constant")
  schedule = _schedule(config, kind, total_steps)
  warmup = config.get("warmup_steps", 0) or 0
  if warmup < 0:
    raise ValueError(f"optimizer.warmup_steps: expected a number >= 0; received {warmup!r}.")
  if kind == "warmup_cosine" or not warmup:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, step / warmup)


def _schedule(config: ConfigDict, kind: str, total_steps: int) -> optax.Schedule:
  lr = config.learning_rate
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
  """The optax transformation described by `config` (the `optimizer` block), with its
  parameter groups (`optax.multi_transform` by path) when `config.groups` names any."""
  name = config.name
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: expected one of {OPTIMIZERS}; received {name!r}.")
  decay_on = config.get("weight_decay_on", "kernels")
  if decay_on not in DECAY_ON:
    raise ValueError(
      f"optimizer.weight_decay_on: expected one of {DECAY_ON}; received {decay_on!r}."
    )
  schedule = make_schedule(config, total_steps)
  groups = _groups(config)
  clip = config.get("clip_global_norm", 0.0) or 0.0
  if clip < 0:
    raise ValueError(f"optimizer.clip_global_norm: expected a number >= 0; received {clip!r}.")
  mask = None if decay_on == "all" else _kernels
  if not groups and not clip:
    return _optimizer(config, schedule, decay_mask=mask)
  labels = group_labels(groups)
  transforms = {DEFAULT_GROUP: _optimizer(config, schedule, decay_mask=mask)}
  for i, g in enumerate(groups):
    if g.get("frozen", False):
      transforms[FROZEN] = optax.set_to_zero()
    else:
      scaled = _scaled(schedule, g.get("lr_multiplier", 1.0))
      transforms[f"group{i}"] = _optimizer(config, scaled, decay_mask=mask)
  parts = []
  if any(g.get("frozen", False) for g in groups):
    # Frozen gradients are zeroed first, so they do not count in the clipping norm.
    parts.append(
      optax.masked(
        optax.set_to_zero(), lambda p: jax.tree.map(lambda label: label == FROZEN, labels(p))
      )
    )
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.multi_transform(transforms, labels))
  return optax.chain(*parts)


def _scaled(schedule: optax.Schedule, multiplier: float) -> optax.Schedule:
  return lambda step: multiplier * schedule(step)


def _kernels(params):
  """True for conv and dense kernels: where weight decay belongs."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: p[-1] == "kernel" for p in flat})


def _optimizer(config: ConfigDict, schedule, *, decay_mask) -> optax.GradientTransformation:
  name, wd = config.name, config.get("weight_decay", 0.0)
  if name == "adamw":
    opt = optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
  else:
    if name == "adam":
      opt = optax.adam(schedule)
    elif name == "sgd":
      opt = optax.sgd(schedule)
    else:
      opt = optax.sgd(schedule, momentum=config.momentum, nesterov=name == "nesterov")
    # The papers' weight decay is an L2 term in the loss, i.e. wd * w added to the gradient.
    opt = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), opt) if wd else opt
  max_rms = config.get("max_filter_rms")
  return optax.chain(opt, renormalize_filters(max_rms)) if max_rms else opt


def _groups(config: ConfigDict) -> list[ConfigDict]:
  groups = [
    g if isinstance(g, ConfigDict) else ConfigDict(dict(g)) for g in config.get("groups") or ()
  ]
  for i, g in enumerate(groups):
    unknown = sorted(set(g.keys()) - set(GROUP_KEYS))
    if unknown or not isinstance(g.get("pattern"), str):
      raise ValueError(
        f"optimizer.groups[{i}]: expected the keys {list(GROUP_KEYS)} with a regex 'pattern'; "
        f"received {g.to_dict()}."
      )
    try:
      re.compile(g.pattern)
    except re.error as e:
      raise ValueError(f"optimizer.groups[{i}].pattern: {g.pattern!r} is no regex ({e}).") from e
    multiplier = g.get("lr_multiplier", 1.0)
    if g.get("frozen", False) and "lr_multiplier" in g:
      raise ValueError(
        f"optimizer.groups[{i}]: a frozen group takes no lr_multiplier; received {g.to_dict()}."
      )
    if not isinstance(multiplier, int | float) or multiplier < 0:
      raise ValueError(
        f"optimizer.groups[{i}].lr_multiplier: expected a number >= 0; received {multiplier!r}."
      )
  return groups


def group_labels(groups):
  """params -> the same tree of group labels ("default", "frozen", "group{i}"); a pattern
  that matches no parameter raises ValueError."""

  def labels(params):
    flat = traverse_util.flatten_dict(params)
    names = {p: "/".join(p) for p in flat}
    out, used = {}, set()
    for p, name in names.items():
      out[p] = DEFAULT_GROUP
      for i, g in enumerate(groups):
        if re.search(g.pattern, name):
          out[p] = FROZEN if g.get("frozen", False) else f"group{i}"
          used.add(i)
          break
    for i, g in enumerate(groups):
      if i not in used:
        matched = [n for n in names.values() if re.search(g.pattern, n)]
        raise ValueError(
          f"optimizer.groups[{i}].pattern: {g.pattern!r} matches no parameter"
          + (f" left by the groups before it (it matches {matched[:3]})" if matched else "")
          + f"; parameter paths look like {list(names.values())[:6]}."
        )
    return traverse_util.unflatten_dict(out)

  return labels


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
