"""Checks at the models' public boundary: a wrong image batch fails with a clear error."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def check_images(
  x: jnp.ndarray,
  *,
  model: str,
  channels: int,
  size: Sequence[int] | None = None,
  min_size: int | None = None,
) -> None:
  """Raises ValueError unless `x` is an NHWC batch the model accepts.

  Args:
    x: the batch, expected `[N, H, W, channels]` float.
    model: the model's name, for the message.
    channels: the channel count C the model was built for.
    size: exact `(H, W)` the model needs (LeNet-5's 32x32), or None.
    min_size: the smallest H and W the model accepts, or None.
  """
  expected = f"[N, {size[0]}, {size[1]}, {channels}]" if size else f"[N, H, W, {channels}]"
  if x.ndim != 4:
    raise ValueError(
      f"{model}: images must be a batch of NHWC images of shape {expected}; "
      f"received shape {tuple(x.shape)} (rank {x.ndim}). Add a batch axis with x[None] "
      "for a single image."
    )
  if x.shape[-1] != channels:
    raise ValueError(
      f"{model}: images must have {channels} channel(s), shape {expected}; received "
      f"shape {tuple(x.shape)} with {x.shape[-1]} channel(s)."
    )
  if size is not None and tuple(x.shape[1:3]) != tuple(size):
    raise ValueError(
      f"{model}: images must be {size[0]}x{size[1]}, shape {expected}; received shape "
      f"{tuple(x.shape)}."
    )
  if min_size is not None and min(x.shape[1:3]) < min_size:
    raise ValueError(
      f"{model}: images must be at least {min_size}x{min_size}; received shape {tuple(x.shape)}."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
      f"{model}: images must be floating point (normalize them first); received dtype {x.dtype}."
    )
