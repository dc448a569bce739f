"""Region proposals of fixed count from the RPN's predictions (torchvision's
`concat_box_prediction_layers` and `RegionProposalNetwork.filter_proposals`).

    flatten_predictions   the head's per-level maps in the anchors' flat order
    anchors_per_level     the static count of anchors of each level
    proposals             per level the best anchors by objectness, decoded, clipped,
                          tiny and low-scoring ones masked, NMS within each level, the
                          post_nms_top_n best kept, padded with a validity mask

Where torchvision drops boxes a validity mask marks them, so proposal selection runs
under `jax.jit` with one compilation whatever the image holds. `research.detection.rpn`
re-exports these names.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.ops import boxes as box_ops

__all__ = ["flatten_predictions", "anchors_per_level", "proposals", "MIN_SIZE"]

# torchvision's RegionProposalNetwork.min_size, not a constructor argument there.
MIN_SIZE = 1e-3


def anchors_per_level(objectness: Sequence[jax.Array]) -> tuple[int, ...]:
  """[L] objectness maps [N, H_l, W_l, A] -> (H_l * W_l * A for each level), static ints."""
  return tuple(int(np.prod(np.shape(o)[1:])) for o in objectness)


def flatten_predictions(objectness: Sequence[jax.Array], deltas: Sequence[jax.Array]):
  """The head's maps in the anchors' flat order (torchvision's `concat_box_prediction_layers`).

  objectness: [L] of [N, H_l, W_l, A]; deltas: [L] of [N, H_l, W_l, 4A].
  Returns (objectness [N, T] float32, deltas [N, T, 4] float32), T = sum_l H_l W_l A.
  """
  n = np.shape(objectness[0])[0]
  obj = jnp.concatenate([o.reshape(n, -1) for o in objectness], axis=1)
  dl = jnp.concatenate([d.reshape(n, -1, 4) for d in deltas], axis=1)
  return obj.astype(jnp.float32), dl.astype(jnp.float32)


def _check(x, expected: tuple, name: str, what: str, fn: str) -> None:
  """A ValueError naming x unless its shape is `expected` (None: any size)."""
  shape = tuple(np.shape(x))
  if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
    raise ValueError(f"{fn}: {name} must be {what}, got shape {shape}")


def _count(value, name: str, fn: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{fn}: {name} must be an int >= 1, got {value!r}")
  return int(value)


def proposals(
  objectness,
  deltas,
  anchors,
  image_sizes,
  num_anchors_per_level: Sequence[int],
  *,
  pre_nms_top_n: int,
  post_nms_top_n: int,
  nms_thresh: float = 0.7,
  score_thresh: float = 0.0,
  min_size: float = MIN_SIZE,
):
  """Region proposals of fixed count: torchvision's `RegionProposalNetwork.filter_proposals`.

  objectness: [N, T] logits; deltas: [N, T, 4] (dx, dy, dw, dh); anchors: [T, 4]
  (x1, y1, x2, y2), the same for every image of the padded batch; image_sizes: [N, 2]
  (height, width) of each image inside the padding, may be traced;
  num_anchors_per_level: static [L] ints summing to T.
  Per level the min(pre_nms_top_n, T_l) highest logits, decoded (weights (1, 1, 1, 1),
  dw and dh clamped at log(1000 / 16)), clipped to the image; boxes narrower or lower
  than min_size and sigmoid scores < score_thresh are masked out; NMS at nms_thresh
  within each level; the post_nms_top_n best kept. Nothing here is differentiated (the
  paper's approximate joint training): the inputs pass through stop_gradient.
  Returns (boxes [N, post_nms_top_n, 4] by decreasing score, scores [N, post_nms_top_n]
  sigmoid probabilities, valid [N, post_nms_top_n] bool); invalid rows are zeros.
  """
  fn = "proposals"
  levels = tuple(int(v) for v in num_anchors_per_level)
  total = sum(levels)
  _check(objectness, (None, total), "objectness", f"[N, T] with T = {total} anchors", fn)
  n = np.shape(objectness)[0]
  _check(deltas, (n, total, 4), "deltas", f"[N, T, 4] = [{n}, {total}, 4]", fn)
  _check(anchors, (total, 4), "anchors", f"[T, 4] = [{total}, 4] (x1, y1, x2, y2)", fn)
  _check(image_sizes, (n, 2), "image_sizes", f"[N, 2] = [{n}, 2] (height, width)", fn)
  if any(v < 1 for v in levels):
    raise ValueError(f"{fn}: num_anchors_per_level must be positive, got {levels}")
  return _proposals(
    objectness,
    deltas,
    jnp.asarray(anchors, jnp.float32),
    jnp.asarray(image_sizes, jnp.float32),
    levels=levels,
    pre=_count(pre_nms_top_n, "pre_nms_top_n", fn),
    post=_count(post_nms_top_n, "post_nms_top_n", fn),
    nms_thresh=float(nms_thresh),
    score_thresh=float(score_thresh),
    min_size=float(min_size),
  )


# One compiled program when called eagerly; inlined under an outer jit.
@functools.partial(
  jax.jit, static_argnames=("levels", "pre", "post", "nms_thresh", "score_thresh", "min_size")
)
def _proposals(objectness, deltas, anchors, image_sizes, **kw):
  objectness = lax.stop_gradient(objectness).astype(jnp.float32)
  deltas = lax.stop_gradient(deltas).astype(jnp.float32)
  index, level, offset = [], [], 0
  for i, size in enumerate(kw["levels"]):
    k = min(kw["pre"], size)
    index.append(lax.top_k(objectness[:, offset : offset + size], k)[1] + offset)
    level.append(np.full((k,), i, np.int32))
    offset += size
  index, level = jnp.concatenate(index, axis=1), jnp.asarray(np.concatenate(level))
  logits = jnp.take_along_axis(objectness, index, axis=1)
  boxes = box_ops.decode(jnp.take_along_axis(deltas, index[..., None], axis=1), anchors[index])
  boxes = jax.vmap(box_ops.clip)(boxes, image_sizes)
  scores = jax.nn.sigmoid(logits)
  # torch compares a float32 tensor with a Python float in float32.
  valid = box_ops.remove_small_boxes(boxes, kw["min_size"]) & (
    scores >= np.float32(kw["score_thresh"])
  )

  def nms(b, s, v):
    # Masked boxes zeroed: batched_nms offsets levels by the largest coordinate, which
    # torchvision takes over the boxes it kept.
    return box_ops.batched_nms(
      jnp.where(v[:, None], b, 0), s, level, kw["nms_thresh"], max_output=kw["post"], valid=v
    )

  keep, ok = jax.vmap(nms)(boxes, scores, valid)
  boxes = jnp.where(ok[..., None], jnp.take_along_axis(boxes, keep[..., None], axis=1), 0)
  scores = jnp.where(ok, jnp.take_along_axis(scores, keep, axis=1), 0)
  return boxes, scores, ok
