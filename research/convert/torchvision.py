"""torchvision state_dicts -> Flax variables.

The contract that makes one converter serve every model: a Flax module is
named after the torchvision module it mirrors, with torchvision's dots kept
("features.0", "layer1.0", "conv1"), so the Flax path ("layer1.0", "conv1")
joined by dots is torchvision's key prefix "layer1.0.conv1". Only the leaf
names and layouts differ:

    Conv      kernel [kh, kw, in, out]  <- weight [out, in, kh, kw]
    Dense     kernel [in, out]          <- weight [out, in]
    BatchNorm scale, bias               <- weight, bias
              batch_stats mean, var     <- running_mean, running_var
    FrozenBatchNorm batch_stats scale, bias, mean, var
                                        <- weight, bias, running_mean, running_var
    any       bias                      <- bias

torchvision's `num_batches_tracked` counters have no Flax counterpart and are
dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# (collection, Flax leaf) -> torchvision leaf.
_LEAVES = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  # research.models.norms.FrozenBatchNorm keeps its affine with its statistics.
  ("batch_stats", "scale"): "weight",
  ("batch_stats", "bias"): "bias",
  ("batch_stats", "var"): "running_var",
}
_IGNORED = ("num_batches_tracked",)


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def load_state_dict(state_dict: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
  """A mapping of arrays or tensors, or a `.pth` path (needs torch) -> {key: numpy array}."""
  if isinstance(state_dict, (str, os.PathLike)):
    path = os.fspath(state_dict)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"state_dict: no file at {path!r}.")
    import torch  # pylint: disable=import-outside-toplevel

    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
      state_dict = state_dict["state_dict"]
  if not isinstance(state_dict, Mapping):
    raise ValueError(
      f"state_dict: expected a mapping of key -> array or a .pth path; received "
      f"{type(state_dict).__name__}."
    )
  return {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith(_IGNORED)}


def from_torch_layout(value: np.ndarray, target_ndim: int) -> np.ndarray:
  if target_ndim == 4 and value.ndim == 4:  # conv: OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if target_ndim == 2 and value.ndim == 2:  # dense: (out, in) -> (in, out)
    return value.T
  return value


def torchvision_key(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision state_dict key of the Flax variable at `path` in `collection`."""
  return ".".join(path[:-1]) + "." + _LEAVES[(collection, path[-1])]


def _zeros_like(inputs):
  """Zeros of the shapes and dtypes of `inputs` (arrays or ShapeDtypeStructs, in dicts,
  lists or tuples), keeping each dict's key order, which jax.tree.map would sort."""
  if isinstance(inputs, Mapping):
    return {k: _zeros_like(v) for k, v in inputs.items()}
  if isinstance(inputs, (list, tuple)):
    return type(inputs)(_zeros_like(v) for v in inputs)
  return jnp.zeros(inputs.shape, inputs.dtype)


def abstract_variables(model: nn.Module, input_shape=None, *, inputs=None) -> dict:
  """The model's variables as shapes only (no computation): {collection: tree}.

  The model is traced on float32 zeros of `input_shape` [N, H, W, C], or on zeros like
  `inputs`: any arrays or `jax.ShapeDtypeStruct`s, in the structure its `__call__` takes
  (an FPN's ordered dict of maps).
  """
  if inputs is None:
    if input_shape is None:
      raise ValueError("abstract_variables: give input_shape [N, H, W, C] or inputs.")
    inputs = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), _zeros_like(inputs), train=False))


def convert(
  state_dict: Mapping[str, Any] | str | os.PathLike,
  model: nn.Module,
  *,
  input_shape=(1, 224, 224, 3),
  inputs=None,
) -> dict:
  """torchvision weights -> Flax variables {"params": ..., "batch_stats": ...} for `model`.

  Args:
    state_dict: {key: array or tensor} as `torch_model.state_dict()` gives, or a
      `.pth` path.
    model: the Flax module whose variables to fill; its structure decides
      which keys are needed.
    input_shape: an input [N, H, W, C] the model accepts, to trace its variables.
    inputs: instead of input_shape, an example input of any structure (arrays or
      `jax.ShapeDtypeStruct`s), e.g. the dict of maps a FeaturePyramidNetwork takes.

  Raises a ValueError that lists every missing, unexpected and mis-shaped key.
  """
  weights = load_state_dict(state_dict)
  shapes = abstract_variables(model, input_shape, inputs=inputs)
  out, used, missing, misshaped = {}, set(), [], []
  for collection, tree in shapes.items():
    flat = traverse_util.flatten_dict(tree)
    converted = {}
    for path, target in flat.items():
      if (collection, path[-1]) not in _LEAVES:
        raise ValueError(f"convert: no torchvision counterpart for {collection}/{'/'.join(path)}.")
      key = torchvision_key(collection, path)
      if key not in weights:
        missing.append(key)
        continue
      used.add(key)
      value = from_torch_layout(weights[key], len(target.shape))
      if value.shape != target.shape:
        misshaped.append(f"{key}: model needs {target.shape}, weights have {value.shape}")
        continue
      converted[path] = jnp.asarray(value, target.dtype)
    out[collection] = traverse_util.unflatten_dict(converted)
  unexpected = sorted(set(weights) - used)
  if missing or unexpected or misshaped:
    raise ValueError(
      f"convert: the weights do not fit {type(model).__name__}"
      + (f"; missing keys {missing}" if missing else "")
      + (f"; unexpected keys {unexpected}" if unexpected else "")
      + (f"; mis-shaped keys {misshaped}" if misshaped else "")
      + (
        " (is num_classes the same as the weights'?)"
        if any("classifier" in m or "fc" in m for m in misshaped)
        else ""
      )
      + "."
    )
  return out
