"""Occlusion sensitivity (Zeiler & Fergus 2013, Section 4.2, Fig. 7).

A grey square slides over the image; at each position the network sees the
occluded image and we record (b) the total activation of one feature map of a
chosen layer (the map with the strongest response to the unoccluded image),
(d) the probability of the correct class and (e) the most probable class.

Occluded copies are evaluated in chunks of positions under one `jit`, either
incrementally (`research.interpret.incremental`: only the activations an
occluder can reach are recomputed, exactly) or by running the model on whole
occluded images under `vmap`; both give the same maps.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from research.interpret import graph, incremental
from research.interpret.checks import check_image, check_label
from research.ops.conv import _pair


def positions(image_size, patch, stride) -> tuple[np.ndarray, np.ndarray]:
  """The occluder's top-left rows and columns: 0, stride, ... while the patch fits.

  image_size, patch, stride: (rows, cols). Returns (rows [Ph], cols [Pw]).
  """
  h, w = image_size
  ph, pw = _pair(patch, "patch", positive=True)
  sh, sw = _pair(stride, "stride", positive=True)
  if ph > h or pw > w:
    raise ValueError(f"patch: expected at most the image size {(h, w)}, got {(ph, pw)}.")
  return np.arange(0, h - ph + 1, sh), np.arange(0, w - pw + 1, sw)


def _outputs(model_fn, layer):
  """images [N, H, W, C] -> (logits [N, K], total activation per feature map [N, F])."""

  def fn(images):
    logits, out = model_fn(images)
    if layer is None:
      return logits, jnp.zeros((logits.shape[0], 1), logits.dtype)
    act = out[layer]
    return logits, act.reshape(act.shape[0], -1, act.shape[-1]).sum(axis=1)

  return fn


# Traced programs by (model_fn, image shape and dtype, layer): maps of many images of one
# model then share one trace and one compilation of each chunk function.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def _program(model_fn, image, layer):
  """(traced program of `_outputs`, number of classes), checking `layer` on first use."""
  key = (model_fn, image.shape, str(image.dtype), layer)
  if key not in _PROGRAMS:
    logits, out = jax.eval_shape(model_fn, jax.ShapeDtypeStruct((1, *image.shape), image.dtype))
    if layer is not None and layer not in out:
      raise ValueError(f"layer: the model has no layer {layer!r}; expected one of {list(out)}.")
    _PROGRAMS[key] = graph.trace(_outputs(model_fn, layer), image[None]), logits.shape[-1]
    while len(_PROGRAMS) > 8:
      _PROGRAMS.popitem(last=False)
  return _PROGRAMS[key]


@functools.partial(jax.jit, static_argnames=("closed",))
def _clean(closed, consts, image):
  return graph.run(closed, [image[None]], consts)


@functools.partial(jax.jit, static_argnames=("closed", "patch", "use_incremental"))
def _chunk(closed, consts, image, origin, fill, label, channel, *, patch, use_incremental):
  dirty = jnp.full((origin.shape[0], *patch, image.shape[-1]), fill, image.dtype)
  if use_incremental:
    logits, act = incremental.occluded(closed, consts, image, dirty, origin)
  else:

    def occlude(o):
      return jax.lax.dynamic_update_slice(image, dirty[0], (o[0], o[1], 0))

    images = jax.vmap(occlude)(origin)
    logits, act = jax.vmap(lambda x: [v[0] for v in graph.run(closed, [x[None]], consts)])(images)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs[:, label], jnp.argmax(probs, axis=-1), jnp.max(probs, axis=-1), act[:, channel]


def occlusion(
  model_fn: Callable,
  image,
  label: int,
  *,
  patch=32,
  stride=8,
  fill: float = 0.0,
  layer: str | None = None,
  chunk_size: int = 64,
  use_incremental: bool = True,
  progress: bool = False,
) -> dict:
  """Occlusion maps of one image.

  model_fn: images [N, H, W, C] -> (logits [N, K], out dict); image: [H, W, C]
  as the model takes it; label: the correct class; patch, stride: int or
  (rows, cols); fill: the occluder's value (grey: the data's mean, 0 after
  mean subtraction); layer: a key of `out` for map (b), or None.

  Returns numpy arrays over the Ph x Pw occluder positions:
    probability [Ph, Pw] (d), top_class [Ph, Pw] and top_probability [Ph, Pw]
    (e), activation [Ph, Pw] (b, when `layer` is given), rows [Ph] and cols
    [Pw] (the occluder's top-left corners), and scalars for the unoccluded
    image: clean_probability, clean_activation, channel (the map used for b: the one
    with the largest total activation on the unoccluded image).
  """
  check_image(image, fn="occlusion")
  image = jnp.asarray(image)
  rows, cols = positions(image.shape[:2], patch, stride)
  patch = _pair(patch, "patch", positive=True)
  if chunk_size < 1:
    raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}.")
  closed, num_classes = _program(model_fn, image, layer)
  check_label(label, num_classes, fn="occlusion")
  consts = list(closed.consts)
  clean_logits, clean_act = _clean(closed, consts, image)
  # (b) follows the feature map with the largest total activation on the clean image.
  channel = int(jnp.argmax(clean_act[0]))

  grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
  results = []
  for start in tqdm(range(0, len(grid), chunk_size), desc="occlusion", disable=not progress):
    chunk = grid[start : start + chunk_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - len(chunk), 0)])
    res = _chunk(
      closed,
      consts,
      image,
      jnp.asarray(padded, jnp.int32),
      jnp.asarray(fill, image.dtype),
      jnp.asarray(label),
      jnp.asarray(channel),
      patch=patch,
      use_incremental=use_incremental,
    )
    results.append([np.asarray(r)[: len(chunk)] for r in res])
  prob, top, top_prob, act = (
    np.concatenate(r).reshape(len(rows), len(cols)) for r in zip(*results, strict=True)
  )
  maps = {
    "probability": prob,
    "top_class": top,
    "top_probability": top_prob,
    "rows": rows,
    "cols": cols,
    "clean_probability": float(jax.nn.softmax(clean_logits[0].astype(jnp.float32))[label]),
    "channel": channel,
  }
  if layer is not None:
    maps["activation"] = act
    maps["clean_activation"] = float(clean_act[0, channel])
  return maps


def attribution(maps: dict, image_size, patch) -> np.ndarray:
  """Captum's Occlusion attribution from the maps: per pixel, the mean over the windows
  that cover it of (clean probability - occluded probability); 0 where none covers.

  Returns [H, W].
  """
  ph, pw = _pair(patch, "patch", positive=True)
  total = np.zeros(image_size, np.float64)
  count = np.zeros(image_size, np.float64)
  drop = maps["clean_probability"] - maps["probability"]
  for i, r in enumerate(maps["rows"]):
    for j, c in enumerate(maps["cols"]):
      total[r : r + ph, c : c + pw] += drop[i, j]
      count[r : r + ph, c : c + pw] += 1
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)
