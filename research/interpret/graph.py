"""Reading a model as a graph of JAX primitives, for the methods that re-run it differently.

The deconvnet swaps the backward rule of ReLU, incremental occlusion recomputes
only what an occluder can reach, the receptive field walks the convolutions and
pools under a layer. Each works on the traced program (`jax.make_jaxpr`) of any
Flax model, so no model has to be written twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core

from research.models import layers

# Primitives that only wrap a sub-program; evaluating their body is the same computation.
CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call")


def trace(fn: Callable, *args) -> core.ClosedJaxpr:
  """The closed program of `fn(*args)`; parameters closed over become its constants.

  Convolutions are traced as lax's primitives (not oneDNN's custom calls), which the
  methods read.
  """
  with layers.use_conv_path("lax"):
    return jax.make_jaxpr(fn)(*args)


def body(eqn: core.JaxprEqn) -> core.ClosedJaxpr | None:
  """The sub-program of a call-like equation (jit, custom_jvp_call, ...), else None."""
  if eqn.primitive.name not in CALLS:
    return None
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if isinstance(sub, core.ClosedJaxpr):
      return sub
    if isinstance(sub, core.Jaxpr):
      return core.ClosedJaxpr(sub, ())
  return None


def bind(eqn: core.JaxprEqn, invals: list) -> list:
  """Evaluates one equation as `jax.core.eval_jaxpr` would; returns its outputs as a list."""
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = []
  if isinstance(params, tuple):  # JAX before 0.7 returned (subfuns, params)
    subfuns, params = params
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def is_relu(eqn: core.JaxprEqn) -> bool:
  """Whether the equation computes max(x, 0): `jax.nn.relu` (a custom_jvp call whose body,
  under any jit wrappers, is that one max) or a bare max with a literal zero."""
  if eqn.primitive.name == "max" and len(eqn.invars) == 2:
    return any(isinstance(v, core.Literal) and v.val == 0 for v in eqn.invars)
  sub = body(eqn)
  if sub is None or len(sub.jaxpr.eqns) != 1:
    return False
  return is_relu(sub.jaxpr.eqns[0])


def evaluate(
  closed: core.ClosedJaxpr,
  args: list,
  rule: Callable[[core.JaxprEqn, list], list | None],
  consts: list | None = None,
) -> list:
  """Evaluates `closed` on `args`, asking `rule(eqn, invals)` first at every equation.

  `rule` returns the outputs to use, or None to evaluate the equation as it is
  (entering call-like bodies, so that rules reach inside jitted helpers).
  `consts` replace the program's constants (e.g. parameters passed into a jit
  as arguments rather than baked in as literals).
  """
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  for var, val in zip(
    closed.jaxpr.constvars, closed.consts if consts is None else consts, strict=True
  ):
    env[var] = val
  for var, val in zip(closed.jaxpr.invars, args, strict=True):
    env[var] = val
  for eqn in closed.jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    outvals = rule(eqn, invals)
    if outvals is None:
      sub = body(eqn) if eqn.primitive.name in ("jit", "pjit", "closed_call") else None
      outvals = evaluate(sub, invals, rule) if sub is not None else bind(eqn, invals)
    for var, val in zip(eqn.outvars, outvals, strict=True):
      env[var] = val
  return [read(v) for v in closed.jaxpr.outvars]


def run(closed: core.ClosedJaxpr, args: list, consts: list | None = None) -> list:
  """Evaluates `closed` as it is (with `consts` in place of its constants when given)."""
  return evaluate(closed, args, lambda eqn, invals: None, consts)


def layer_names(model, variables, image_shape: tuple[int, ...]) -> list[str]:
  """The names in the `out` dict of `model.apply(variables, x)` for one image of `image_shape`."""
  shape = jax.ShapeDtypeStruct((1, *image_shape), jax.numpy.float32)
  _, out = jax.eval_shape(lambda x: model.apply(variables, x), shape)
  return list(out)


def check_layer(model, variables, image_shape: tuple[int, ...], layer: str) -> None:
  """ValueError naming the valid layers when `out` has no `layer`."""
  names = layer_names(model, variables, image_shape)
  if layer not in names:
    raise ValueError(
      f"layer: {type(model).__name__} has no layer {layer!r}; expected one of {names}."
    )
