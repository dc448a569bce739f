"""Input checks shared by the interpretability methods: a wrong input fails with a clear error.

Every message names the function, the argument, what was expected and what was
received. Shapes are static, so the shape checks also work on traced arrays
under `jax.jit`; label values can only be checked on concrete arrays, so under
`jit` only a label's dtype is checked.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["check_image", "check_label"]


def _prefix(fn: str | None) -> str:
  return f"{fn}: " if fn else ""


def check_image(image, *, name: str = "image", fn: str | None = None) -> None:
  """Raises ValueError unless `image` is one image of shape [H, W, C] (rank 3)."""
  shape = tuple(np.shape(image))
  if len(shape) != 3:
    hint = " (one image, not a batch)" if len(shape) == 4 else ""
    raise ValueError(
      f"{_prefix(fn)}{name} must be one image of shape [H, W, C]{hint}; received shape "
      f"{shape} (rank {len(shape)})."
    )


def check_label(label, num_classes: int, *, name: str = "label", fn: str | None = None) -> None:
  """Raises ValueError unless `label` (an int or an int array) lies in [0, num_classes)."""
  dtype = label.dtype if isinstance(label, jax.Array) else np.asarray(label).dtype
  if not (np.issubdtype(dtype, np.integer) and dtype != np.bool_):
    raise ValueError(
      f"{_prefix(fn)}{name} must be an integer class index in [0, {num_classes}); received "
      f"{label!r} of dtype {dtype}."
    )
  if isinstance(label, jax.core.Tracer):  # a traced value cannot be read, let alone raise
    return
  values = np.asarray(label)
  bad = values[(values < 0) | (values >= num_classes)]
  if bad.size:
    raise ValueError(
      f"{_prefix(fn)}{name} must lie in [0, {num_classes}) (the model has {num_classes} "
      f"logits); received {bad.reshape(-1)[0].item()}"
      + (f" among {values.tolist()}" if values.ndim else "")
      + "."
    )
