"""A model's layers, output shapes and parameter counts, like the lecture notes' printouts.

python -m research.models.summary lenet.LeNet5 1,32,32,1
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from research import models


def summary(model, input_shape, *, depth: int | None = 1) -> str:
  """Flax's table of `model` on a zero batch of `input_shape` [N, H, W, C], as text.

  depth: how many levels of submodules get their own rows (None: all).
  """
  return model.tabulate(
    jax.random.PRNGKey(0),
    jnp.zeros(input_shape, jnp.float32),
    train=False,
    depth=depth,
    console_kwargs={"width": 120, "force_terminal": False, "color_system": None},
  )


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit("usage: python -m research.models.summary FAMILY.VARIANT N,H,W,C")
  model = models.resolve(argv[0])()
  print(summary(model, tuple(int(s) for s in argv[1].split(","))))


if __name__ == "__main__":
  main(sys.argv[1:])
